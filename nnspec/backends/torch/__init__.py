"""The PyTorch backend: a checked spec compiled to one standalone, readable PyTorch file."""

from nnspec.backends.torch.codegen import compile_to_file, generate

__all__ = ["compile_to_file", "generate"]
