"""Reading another program's checkpoint: safetensors, and pickle only when asked.

A `.pt`/`.bin`/`.pth`/`.ckpt` file is a Python pickle (inside a zip for `torch.save`):
loading it can run any code its author put in. nnspec refuses it unless `allow_pickle` is
set, and even then hands it to torch's restricted unpickler (`weights_only=True`), which
builds tensors and plain containers and refuses everything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
PICKLE_WARNING = ("a pickle file can run any code when it is loaded; convert it to "
                  "safetensors where it came from, or pass --allow-pickle if you trust it "
                  "(nnspec then uses torch's restricted loader, weights_only=True)")


class CheckpointError(ValueError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """The named arrays of a checkpoint; CheckpointError for a file that is not one."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not _is_safetensors(path) and _is_pickle(path):
        if not allow_pickle:
            raise CheckpointError(f"{path}: is a pickle, which nnspec does not load",
                                  PICKLE_WARNING)
        return _read_pickle(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})",
                              "checkpoints are read from .safetensors files") from None


def _is_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length, then the JSON header."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _is_pickle(path: Path) -> bool:
    """By the name or by the first bytes: a zip (torch.save) or a pickle protocol mark."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return path.suffix.lower() in PICKLE_SUFFIXES or head == b"PK" or head[:1] == b"\x80"


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any refusal of the restricted unpickler
        raise CheckpointError(f"{path}: torch's restricted loader refused it ({error})",
                              "only tensors and plain containers are accepted") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(f"{path}: holds no state_dict (a mapping of names to tensors)")
    return {str(k): v.detach().cpu().numpy() for k, v in loaded.items()}
