"""The shape of src/: canonical Lightning only, and modules that import one another without a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "fashion_mnist_softmax"


def imports_of(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashion_mnist_softmax"):
            if node.module == "fashion_mnist_softmax":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
    return found


def test_no_module_imports_itself_back_through_others():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}
    assert graph["training"] >= {"config", "distributed", "callbacks"}  # the walk sees real imports

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph.get(node, ()):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen and (found := cycle_from(start, nxt, (*seen, nxt))):
                return found
        return None

    for module in graph:
        assert cycle_from(module, module, (module,)) is None, cycle_from(module, module, (module,))


def test_src_is_canonical_lightning():
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    for forbidden in ("automatic_optimization = False", "manual_backward", "batches_per_step"):
        assert forbidden not in source, forbidden
    private = re.findall(r"^\s*from lightning[\w.]* import .*\b_\w+", source, flags=re.M)
    private += re.findall(r"(?:trainer|strategy|fit_loop|launcher)\._\w+", source)
    assert not private, private
