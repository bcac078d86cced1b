"""The config of a class, derived from its constructor's signature: each argument a key, with its type and default.

A config node names its target (``conf/data/fashion_mnist.yaml``: ``/signature@_here_: <the DataModule>``) and sets
only what differs from the defaults; every other argument is a key too, with the default the code declares, so that
an argument added to a constructor is a key of the config with no other file changed. Ranges come from the
signature's ``Annotated[...]`` metadata (annotated-types' ``Ge``, ``Gt``, ``Interval``, ...).

The signature is read from the source, not from the imported class: importing Lightning takes seconds, and a config
is composed, and a mistake in it reported, before any of that. The reader follows the module's own ``from ...
import`` lines to where a class is defined, and a constructor that takes ``*args, **kwargs`` to its base class's.
Where the source says too little (no source, a definition made at run time), the class is imported instead.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import annotated_types
from omegaconf import MISSING

# what a run passes to a class itself, never a key of its config: a Trainer's callbacks and loggers; and a parameter
# without a default of a type no config holds (the parameters an optimizer trains, a scheduler's optimizer)
GIVEN_BY_THE_RUN = {"callbacks", "logger", "plugins", "enable_progress_bar", "enable_model_summary"}
HYDRA_KEYS = {"_target_": str, "_recursive_": bool, "_convert_": str, "_partial_": bool}
HYDRA_DEFAULTS = {"_recursive_": True, "_convert_": "none", "_partial_": False}  # hydra.utils.instantiate's
PRIMITIVES = (int, float, bool, str)


class _Unknown:
    """What a name stands for that the reader cannot resolve (a class of Lightning's, ``torch.Tensor``)."""

    def __getattr__(self, name: str) -> _Unknown:
        return self

    def __getitem__(self, item: Any) -> _Unknown:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Unknown:
        return self

    def __or__(self, other: Any) -> _Unknown:
        return self

    __ror__ = __or__


UNKNOWN = _Unknown()
TYPING = {name: getattr(typing, name) for name in ("Any", "Optional", "Union", "Literal", "Annotated", "Callable")}
NAMES = {
    **{t.__name__: t for t in (*PRIMITIVES, list, dict, tuple, set, type(None))},
    **TYPING,
    **{name: getattr(annotated_types, name) for name in annotated_types.__all__},
    "Sequence": Sequence,
    "Iterable": Iterable,
    "Mapping": Mapping,
    **{f.__name__: f for f in (len, min, max, abs, round)},
    "None": None,
    "True": True,
    "False": False,
}


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any  # a type the config can hold: a primitive, Optional, list or dict of primitives, or Any
    default: Any  # MISSING where the signature has none
    constraints: tuple[annotated_types.BaseMetadata, ...] = ()


def module_file(module: str) -> Path | None:
    """The source file of ``module``, found as the import system finds it, without importing any of it."""
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    if spec is None:
        return None
    places = [Path(p) for p in spec.submodule_search_locations or []] or [Path(spec.origin).parent]
    for place in places:
        path = place
        for part in parts:
            path = path / part if (path / part / "__init__.py").is_file() else path / f"{part}.py"
        path = path / "__init__.py" if path.is_dir() else path
        if path.is_file() and (parts or spec.submodule_search_locations):
            return path
    return Path(spec.origin) if not parts and spec.origin else None


@functools.cache
def _tree(module: str) -> ast.Module | None:
    path = module_file(module)
    return ast.parse(path.read_text(), str(path)) if path else None


def _imported(module: str, statement: ast.ImportFrom) -> str:
    """The module a ``from ... import`` of ``module`` reads from."""
    if not statement.level:
        return statement.module or ""
    package = module.split(".")
    if not str(module_file(module)).endswith("__init__.py"):
        package = package[:-1]
    package = package[: len(package) - statement.level + 1]
    return ".".join([*package, *([statement.module] if statement.module else [])])


def _statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """A module's statements, those in its top-level ``if`` and ``try`` blocks too."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody"):
            if isinstance(node, ast.If | ast.Try):
                yield from _statements(getattr(node, block, []))
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                yield from _statements(handler.body)


def _find(module: str, name: str) -> tuple[str, ast.AST] | None:
    """Where ``name`` of ``module`` is defined: the module and the class, function or assignment; following the
    module's ``from ... import`` lines."""
    for node in _statements(_tree(module).body if _tree(module) else []):
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return module, node.value
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find(_imported(module, node), alias.name)
    return None


def _value(module: str, node: ast.AST | None, constants: bool = True) -> Any:
    """An annotation's or a default's value: the names in it are the typing, builtin and annotated-types names, and,
    with ``constants``, the module's own constants (followed where it imports them); UNKNOWN for the others."""
    if node is None:
        return UNKNOWN

    class Names(dict):
        def __missing__(self, name: str) -> Any:
            found = _find(module, name) if constants else None
            if found is None or isinstance(found[1], ast.ClassDef | ast.FunctionDef):
                return UNKNOWN
            return _value(*found)

    try:
        return eval(compile(ast.Expression(node), module, "eval"), {"__builtins__": {}}, Names(NAMES))
    except Exception:  # an expression the reader cannot evaluate without the module: not a value of a config
        return UNKNOWN


def metadata(items: Iterable[Any]) -> tuple[annotated_types.BaseMetadata, ...]:
    """The constraints among ``items`` (``Annotated``'s metadata), groups such as ``Interval`` in their parts."""
    found: list[annotated_types.BaseMetadata] = []
    for item in items:
        if isinstance(item, annotated_types.GroupedMetadata):
            found += metadata(item)
        elif isinstance(item, annotated_types.BaseMetadata):
            found.append(item)
    return tuple(found)


def _config_type(annotation: Any) -> tuple[Any, tuple[annotated_types.BaseMetadata, ...]]:
    """A type a config can hold for ``annotation`` (OmegaConf's: primitives, Optional, lists and dicts of
    primitives, Any), and its constraints."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, constraints = _config_type(args[0])
        return base, constraints + metadata(args[1:])
    if annotation in PRIMITIVES:
        return annotation, ()
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        inner, constraints = _config_type(others[0]) if len(others) == 1 else (Any, ())
        return (Optional[inner] if len(others) < len(args) else inner), constraints  # noqa: UP045 (OmegaConf's)
    if origin in (list, tuple, Sequence, Iterable) and args and args[0] in PRIMITIVES and args[-1] is not Ellipsis:
        return (list[args[0]] if len(set(args)) == 1 else Any), ()
    return Any, ()  # dicts too: OmegaConf's typed dicts take null, then a dict, badly


def _from_source(target: str) -> list[Parameter] | None:
    module, _, name = target.rpartition(".")
    found = _find(module, name) if module else None
    if found is None or not isinstance(found[1], ast.ClassDef | ast.FunctionDef):
        return None
    where, node = found
    if isinstance(node, ast.FunctionDef):
        return _parameters(where, node, skip_first=False)
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    own = _parameters(where, init, skip_first=True) if init else []
    if own is None:
        return None
    if init is None or init.args.vararg or init.args.kwarg:  # what it does not take itself, its base takes
        bases = [ast.unparse(base) for base in node.bases]
        inherited = _from_source(f"{where}.{bases[0]}") if len(bases) == 1 and "." not in bases[0] else []
        if inherited is None:
            return None
        own += [p for p in inherited if p.name not in {q.name for q in own}]
    return own


def _parameters(module: str, function: ast.FunctionDef, skip_first: bool) -> list[Parameter] | None:
    args = function.args
    positional = [*args.posonlyargs, *args.args][1 if skip_first else 0 :]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = [*zip(positional, defaults, strict=True), *zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    found = []
    for arg, default in pairs:
        if arg.arg in GIVEN_BY_THE_RUN:
            continue
        kind = _value(module, arg.annotation, constants=False)
        value = MISSING if default is None else _value(module, default)
        if _contains_unknown(value) or (value is MISSING and _names_unknown(kind)):  # what no config can hold
            continue
        annotation, constraints = _config_type(kind)
        found.append(Parameter(arg.arg, annotation, list(value) if isinstance(value, tuple) else value, constraints))
    return found


def _names_unknown(annotation: Any) -> bool:
    """Whether an annotation names a type the reader could not read (Lightning's, torch's)."""
    return isinstance(annotation, _Unknown) or any(_names_unknown(a) for a in typing.get_args(annotation))


def _contains_unknown(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_contains_unknown(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_unknown(v) for v in value.values())
    return isinstance(value, _Unknown) or not isinstance(value, (*PRIMITIVES, type(None), type(MISSING)))


def _from_import(target: str) -> list[Parameter]:
    """The signature of the imported class or function: where its source says too little."""
    module, _, name = target.rpartition(".")
    found = []
    for p in inspect.signature(getattr(importlib.import_module(module), name)).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        default = MISSING if p.default is p.empty else p.default
        default = list(default) if isinstance(default, tuple) else default
        annotation, constraints = _config_type(p.annotation)
        if not _contains_unknown(default) and not (default is MISSING and p.annotation not in (*PRIMITIVES, dict)):
            found.append(Parameter(p.name, annotation, default, constraints))
    return found


@functools.cache
def parameters(target: str) -> tuple[Parameter, ...]:
    """The configurable parameters of the class or function that ``target`` (a dotted path) names."""
    found = _from_source(target)
    return tuple(p for p in (found if found is not None else _from_import(target)) if p.name not in GIVEN_BY_THE_RUN)


@functools.cache
def schema(target: str) -> type:
    """The config of ``target`` as a dataclass: ``_target_``, Hydra's instantiation keys, and every parameter.

    It is this module's attribute ``<target with "__" for ".">``, made when first asked for, so that a config made
    from it pickles, and unpickles in another process (the fused launcher's composition workers hand theirs over).
    """
    fields: list[tuple[str, Any, Any]] = [
        (key, kind, dataclasses.field(default=target if key == "_target_" else HYDRA_DEFAULTS[key]))
        for key, kind in HYDRA_KEYS.items()
    ]
    for p in parameters(target):
        if isinstance(p.default, list | dict):
            fields.append((p.name, p.annotation, dataclasses.field(default_factory=lambda v=p.default: v)))
        else:
            fields.append((p.name, p.annotation, dataclasses.field(default=p.default)))
    made = dataclasses.make_dataclass(target.replace(".", "__"), fields)
    made.__module__ = __name__
    return made


def __getattr__(name: str) -> type:
    if "__" not in name or name.startswith("__"):
        raise AttributeError(name)
    return schema(name.replace("__", "."))
