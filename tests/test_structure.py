"""The shape of the code: a core that imports no plugin, modules without import cycles, canonical Lightning only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

CORE = ROOT / "src"  # the fashion_mnist_softmax package and its hydra/sweeper=grid plugin
PLUGINS = sorted((ROOT / "plugins").glob("*/hydra_plugins/*"))
PACKAGE = CORE / "fashion_mnist_softmax"


def modules_under(root: Path) -> dict[str, Path]:
    """Each module below ``root`` (a folder on sys.path) by its dotted name."""
    named = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if "tests" not in parts and "example" not in parts:
            named[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return named


MODULES = {**modules_under(CORE), **{k: v for p in PLUGINS for k, v in modules_under(p.parent.parent).items()}}


def imports_of(path: Path, name: str, lazy: bool) -> set[str]:
    """The modules of MODULES that ``path`` (module ``name``) imports when it is imported, and with ``lazy`` those
    its functions import when they run (as a Hydra plugin class imports its core when it is used)."""
    found, tree = set(), ast.parse(path.read_text())
    for block in ast.walk(tree):  # imports for type checkers only: not run
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:  # relative: from the module's package, or a package above it
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found |= {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys() or {base} & MODULES.keys()
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & MODULES.keys()
    return found


GRAPH = {name: imports_of(path, name, lazy=False) for name, path in MODULES.items()}  # what importing runs
REACHES = {name: imports_of(path, name, lazy=True) for name, path in MODULES.items()}


def test_the_core_imports_no_plugin():
    plugins = {f"hydra_plugins.{p.name}" for p in PLUGINS}
    assert plugins == {"hydra_plugins.hydra_optuna_pruning_sweeper", "hydra_plugins.fashion_mnist_fused_launcher"}
    assert any(
        i.startswith("fashion_mnist_softmax") for i in REACHES["hydra_plugins.fashion_mnist_fused_launcher._groups"]
    )
    core = {name for name, path in MODULES.items() if path.is_relative_to(CORE)}
    reaching = {(name, i) for name in core for i in REACHES[name] if ".".join(i.split(".")[:2]) in plugins}
    assert reaching == set()


def test_the_optuna_sweeper_imports_nothing_of_the_project():
    sweeper = {name for name in MODULES if name.startswith("hydra_plugins.hydra_optuna_pruning_sweeper")}
    assert len(sweeper) >= 4 and {i for name in sweeper for i in REACHES[name]} <= sweeper


def test_no_module_imports_itself_back_through_others():
    """At import: a function's own import (a plugin class's of its core, done when it is used) closes no cycle."""
    assert GRAPH["fashion_mnist_softmax.run.training"] >= {"fashion_mnist_softmax.run.distributed"}  # real imports
    relative = GRAPH["hydra_plugins.fashion_mnist_fused_launcher._groups"]
    assert "hydra_plugins.fashion_mnist_fused_launcher._population" in relative  # relative imports too

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in GRAPH.get(node, ()):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen and (found := cycle_from(start, nxt, (*seen, nxt))):
                return found
        return None

    for module in GRAPH:
        assert cycle_from(module, module, (module,)) is None, cycle_from(module, module, (module,))


def test_src_is_canonical_lightning():
    source = "\n".join(path.read_text() for path in MODULES.values())
    for forbidden in ("automatic_optimization = False", "manual_backward", "batches_per_step"):
        assert forbidden not in source, forbidden
    private = re.findall(r"^\s*from lightning[\w.]* import .*\b_\w+", source, flags=re.M)
    private += re.findall(r"(?:trainer|strategy|fit_loop|launcher)\._(?!target_)\w+", source)
    assert not private, private
