"""The shape of src/: canonical Lightning only, and modules that import one another without a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "fashion_mnist_softmax"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashion_mnist_softmax"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys() or {node.module}
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_no_module_imports_itself_back_through_others():
    assert GRAPH["fashion_mnist_softmax.run.training"] >= {"fashion_mnist_softmax.run.distributed"}  # real imports

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in GRAPH.get(node, ()):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen and (found := cycle_from(start, nxt, (*seen, nxt))):
                return found
        return None

    for module in GRAPH:
        assert cycle_from(module, module, (module,)) is None, cycle_from(module, module, (module,))


def test_the_fused_sweeps_are_opt_in():
    """Only the fused package itself and the launcher plugin import it."""
    fused = "fashion_mnist_softmax.fused"
    importers = {name for name, imported in GRAPH.items() if any(i.startswith(fused) for i in imported)}
    assert importers, "the walk sees the fused modules import one another"
    assert {name for name in importers if not name.startswith(fused)} == set()
    plugins = ROOT / "src" / "hydra_plugins"
    assert any(fused in path.read_text() for path in plugins.rglob("*.py")), "the launcher plugin reaches it"


def test_src_is_canonical_lightning():
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    for forbidden in ("automatic_optimization = False", "manual_backward", "batches_per_step"):
        assert forbidden not in source, forbidden
    private = re.findall(r"^\s*from lightning[\w.]* import .*\b_\w+", source, flags=re.M)
    private += re.findall(r"(?:trainer|strategy|fit_loop|launcher)\._\w+", source)
    assert not private, private
