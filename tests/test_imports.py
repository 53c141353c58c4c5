"""The package's import graph has no cycles, and the commands that need no tensors import
no torch.

The graph is read statically (`ast`), so every import counts, also one on a code path no
test runs. An edge goes from a module to each `nnspec` module it imports: `from pkg import
mod` is an edge to `pkg.mod` when that is a module, else to the package `pkg` itself.

Module-level imports (those that run when the module is imported, class bodies included)
must be acyclic: a cycle among them makes the result depend on which module is imported
first. Every import together must be acyclic too, the lazy ones inside functions (kept to
stay off torch or numpy until needed) and those under `if TYPE_CHECKING:` included: an
import back into a module that imports you is the same tangle of layers, only deferred or
hidden from the interpreter (`codegen.py` and `writer.py` were such a pair).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under `root` by dotted name (`pkg.sub` for
    `pkg/sub/__init__.py`)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


When = Literal["module", "lazy", "typing"]  # runs on import | inside a function | never


def _imports(tree: ast.AST, when: When = "module") -> Iterator[tuple[ast.stmt, When]]:
    """Each import statement and when it runs."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, when
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(ast.Module(node.body, []), "typing")
            yield from _imports(ast.Module(node.orelse, []), when)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(node, "typing" if when == "typing" else "lazy")
        else:
            yield from _imports(node, when)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


_ORDER: tuple[When, ...] = ("module", "lazy", "typing")


def import_graph(root: Path, package: str) -> dict[str, dict[str, When]]:
    """module -> {imported module: the earliest any of its imports runs}."""
    found = modules(root, package)
    graph: dict[str, dict[str, When]] = {}
    for name, path in found.items():
        edges: dict[str, When] = {}
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for statement, when in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            else:
                base = statement.module or ""
                if statement.level:
                    anchor = own_package.split(".")
                    anchor = anchor[:len(anchor) - statement.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base
                           for alias in statement.names]
            for target in targets:
                if target in found and target != name:
                    earlier = edges.get(target, "typing")
                    edges[target] = min(earlier, when, key=_ORDER.index)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, When]], counting: tuple[When, ...]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of
    modules, by Tarjan's algorithm, through the imports that run `counting`; empty when the
    graph is acyclic."""
    edges = {m: sorted(t for t, when in out.items() if when in counting)
             for m, out in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(edges):
        if module not in index:
            connect(module)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: set[str], edges: dict[str, list[str]]) -> list[str]:
    """A path through `group` from its first module back to it."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        module = frontier.pop(0)
        for target in edges[module]:
            if target == start:
                return paths[module] + [start]
            if target in group and target not in paths:
                paths[target] = paths[module] + [target]
                frontier.append(target)
    raise AssertionError("a strongly connected group without a cycle")


def _described(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


# ---- the package --------------------------------------------------------------------------


def test_module_level_imports_have_no_cycle():
    graph = import_graph(ROOT, "nnspec")
    assert "nnspec.backends.torch.codegen" in graph  # the walk found the package
    found = cycles(graph, ("module",))
    assert not found, "import cycles:\n" + _described(found)


def test_no_cycle_counting_lazy_and_type_checking_imports():
    found = cycles(import_graph(ROOT, "nnspec"), _ORDER)
    assert not found, ("import cycles through imports inside functions or under "
                       "TYPE_CHECKING:\n" + _described(found))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(root: Path, package: str, under: str) -> list[str]:
    """`module: from other import _name` for each private name a module under `under`
    takes from another module of the package, and `module: other._name` for each one it
    reads through an imported module (`from pkg import other`, `import pkg.other as other`)."""
    found = modules(root, package)
    out = []
    for name, path in found.items():
        if name != under and not name.startswith(f"{under}."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_names: set[str] = set()  # local names bound to other modules of the package
        for statement, _ in _imports(tree):
            if isinstance(statement, ast.ImportFrom) and (
                    statement.level or (statement.module or "").startswith(package)):
                out += [f"{name}: from {statement.module} import {alias.name}"
                        for alias in statement.names if _private(alias.name)]
                module_names.update(alias.asname or alias.name for alias in statement.names
                                    if f"{statement.module}.{alias.name}" in found)
            elif isinstance(statement, ast.Import):
                module_names.update(alias.asname for alias in statement.names
                                    if alias.asname and alias.name in found)
        out += [f"{name}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_names and _private(node.attr)]
    return sorted(set(out))


def test_no_module_takes_a_private_name_from_another_module():
    """The house rule, package-wide: what another module needs is public."""
    assert private_imports(ROOT, "nnspec", "nnspec") == []


# ---- the checker itself, on a small package it must catch ---------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, dict[str, bool]]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return import_graph(tmp_path, "pkg")


def test_the_checker_finds_module_level_cycles_of_every_import_form(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "from pkg.a import run\n",
        "a.py": "from . import b\n\ndef run():\n    return b\n",
        "b.py": "import pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import run\n",
    })
    assert private_imports(tmp_path, "pkg", "pkg") == []
    assert graph["pkg"] == {"pkg.a": "module"}
    assert graph["pkg.a"] == {"pkg.b": "module"}
    assert graph["pkg.sub.c"] == {"pkg.a": "module"}
    assert cycles(graph, ("module",)) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_the_checker_tells_lazy_and_type_checking_imports(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nfrom pkg import b\n"
                "if TYPE_CHECKING:\n    from pkg import c\n",
        "b.py": "class B:\n    def load(self):\n        from pkg import a\n        return a\n",
        "c.py": "import pkg.a\n",
    })
    assert graph["pkg.a"] == {"pkg.b": "module", "pkg.c": "typing"}
    assert graph["pkg.b"] == {"pkg.a": "lazy"}
    assert cycles(graph, ("module",)) == []
    assert cycles(graph, ("module", "lazy")) == [["pkg.a", "pkg.b", "pkg.a"]]
    # a -> c only under TYPE_CHECKING, c -> a at module level
    assert sorted(cycles(graph, ("module", "typing"))) == [["pkg.a", "pkg.c", "pkg.a"]]


def test_the_checker_finds_the_cycle_this_package_once_had(tmp_path):
    """codegen.py imported writer.py, which imported codegen.py for a type annotation."""
    graph = _package(tmp_path, {
        "__init__.py": "from pkg.codegen import generate\n",
        "codegen.py": "from pkg.writer import Writer\n\ndef generate():\n    return Writer\n",
        "writer.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                     "    from pkg.codegen import Generator\n",
    })
    assert cycles(graph, ("module",)) == []
    assert cycles(graph, _ORDER) == [["pkg.codegen", "pkg.writer", "pkg.codegen"]]


def test_the_checker_finds_private_names_taken_from_other_modules(tmp_path):
    _package(tmp_path, {
        "__init__.py": "",
        "source.py": "def _split():\n    pass\n",
        "codegen.py": "from pkg.source import _split\nfrom os import _exit\n",
        "lazy.py": "def f():\n    from .source import _split as split\n    return split\n",
        "reader.py": "import os\nfrom pkg import source\nimport pkg.source as src\n"
                     "x = source._split, src._split, source.__name__, os._exit\n",
    })
    assert private_imports(tmp_path, "pkg", "pkg") == [
        "pkg.codegen: from pkg.source import _split", "pkg.lazy: from source import _split",
        "pkg.reader: source._split", "pkg.reader: src._split"]


# ---- commands that need no tensors import no torch ----------------------------------------

NO_TORCH = """
import sys
from click.testing import CliRunner
from nnspec.cli import main
for args in {args!r}:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
print(",".join(sorted(m for m in ("torch", "numba") if m in sys.modules)))
"""


@pytest.mark.parametrize("command", ["check", "summary", "render", "compile"])
def test_commands_without_tensors_never_import_torch(command, tmp_path):
    """`compile` writes PyTorch source without needing torch; `render` draws a diagram. Nor
    numba, which only the interpreter's compiled loops need (its import alone takes 0.2 s)."""
    spec = str(SPECS / "resnet18.nn")
    args = {"check": [["check", spec]],
            "summary": [["summary", spec], ["summary", str(SPECS / "gpt2_small.nn")]],
            "render": [["render", spec, "-o", str(tmp_path / "resnet18.dot")]],
            "compile": [["compile", spec, "-o", str(tmp_path / "resnet18.py")],
                        ["compile", str(SPECS / "digits_mlp.nn"), "--train-script",
                         "-o", str(tmp_path / "digits_mlp.py")]]}[command]
    result = subprocess.run([sys.executable, "-c", NO_TORCH.format(args=args)],
                            capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"`nnspec {command}` imported {result.stdout.strip()}"
