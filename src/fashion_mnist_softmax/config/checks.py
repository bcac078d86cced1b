"""Check a composed config once, before its run dir exists, for what its types cannot say.

Hydra composes each node on its target's signature (:mod:`~fashion_mnist_softmax.config.signatures`): an unknown
key or a value of the wrong type stops the composition, and :mod:`~fashion_mnist_softmax.run.failures` says so in
one paragraph. :func:`check_config` checks the rest: the ranges that signatures declare (and those of other
libraries' arguments, :data:`CONSTRAINTS`), the app's own keys, what cannot run together, the machine's devices,
and the files a run reads and writes. A single run calls it from a Hydra callback before Hydra writes anything
(:mod:`fashion_mnist_softmax.run.run_dirs`), each job of a multirun at its start, the fused launcher each job as
it composes it. torch is imported only to read a checkpoint the config names and, once every other check has
passed, to see the machine's devices, so that a mistake is reported within a second.
"""

from __future__ import annotations

import difflib
import math
import operator
import os
import shutil
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types as at
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError, UnsupportedInterpolationType

from fashion_mnist_softmax.checkpoints import check_checkpoint
from fashion_mnist_softmax.config.signatures import metadata, parameters
from fashion_mnist_softmax.data.fashion_mnist import SPLIT_SIZES, unavailable, unfound
from fashion_mnist_softmax.data.images import image_files, open_image
from fashion_mnist_softmax.errors import DiskFull, UserError
from fashion_mnist_softmax.models import SCRATCH_MODEL, SCRATCH_OPTIMIZER

APPS = ("train", "eval", "predict")  # the entry points, by their config's name
# what other libraries' signatures leave unsaid (the project's own say theirs): ranges, and the choices the project
# runs with (trainer=ddp starts its processes itself; the precisions it is tested in)
CONSTRAINTS: dict[str, dict[str, tuple[Any, ...]]] = {
    "lightning.Trainer": {
        "max_epochs": (at.Ge(1),),
        "max_steps": (at.Ge(-1),),
        "accumulate_grad_batches": (at.Ge(1),),
        "log_every_n_steps": (at.Ge(0),),
        "gradient_clip_val": (at.Ge(0),),
        "strategy": ("auto", "ddp"),
        "accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
        "precision": (None, "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
    },
    "torch.optim.SGD": {"lr": (at.Gt(0),), "momentum": (at.Interval(ge=0, lt=1),), "weight_decay": (at.Ge(0),)},
    "torch.optim.Adam": {"lr": (at.Gt(0),), "weight_decay": (at.Ge(0),)},
}
# the app's own keys, which no signature declares
APP_KEYS: dict[str, tuple[type, tuple[Any, ...]]] = {
    "seed": (int, (at.Interval(ge=0, le=2**32 - 1),)),
    "top_k": (int, (at.Ge(1),)),
    "train": (bool, ()),
    "test": (bool, ()),
}
MIN_FREE_BYTES = 1 << 20  # below this, a run would fail as it writes its config or first checkpoint
FREE = ("callbacks", "logger")  # the groups whose nodes a command line may add, as +callbacks.<name>=...


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _choices(constraints: tuple[Any, ...]) -> bool:
    """Whether ``constraints`` are a value's choices, not annotated-types' bounds."""
    return bool(constraints) and not isinstance(constraints[0], at.BaseMetadata | at.GroupedMetadata)


def expected(kind: type | None, constraints: tuple[Any, ...]) -> str:
    """What a value of ``kind`` within ``constraints`` (annotated-types' bounds, or a tuple of choices) is, in
    words: "a whole number of at least 1"."""
    if _choices(constraints):
        return ", ".join("null" if c is None else str(c) for c in constraints[:-1]) + f" or {constraints[-1]}"
    bounds = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in metadata(constraints)}
    noun = (
        "a whole number"
        if kind is int
        else "a number"
        if bounds or kind is float
        else {bool: "true or false"}.get(kind, "text")
    )
    if "ge" in bounds and "lt" in bounds:
        return f"{noun} from {bounds['ge']} up to, not including, {bounds['lt']}"
    if "ge" in bounds and "le" in bounds:
        return f"{noun} from {bounds['ge']} to {bounds['le']}"
    words = {"ge": "of at least", "gt": "greater than", "le": "of at most", "lt": "less than"}
    return " ".join([noun, *(f"{words[b]} {v}" for b, v in bounds.items())])


def satisfies(value: Any, kind: type | None, constraints: tuple[Any, ...]) -> bool:
    if _choices(constraints):
        return value in constraints
    bounds = [(type(m).__name__.lower(), m) for m in metadata(constraints)]
    number = isinstance(value, bool) if kind is bool else _whole(value) if kind is int else _number(value)
    return number and all(getattr(operator, name)(value, getattr(m, name)) for name, m in bounds)


def invalid(key: str, value: Any, expected: str) -> UserError:
    shown = "null" if value is None else repr(value)
    return UserError(f"{key}={shown} is not valid: it must be {expected}. Fix it on the command line.")


def unknown_key(key: str, node: DictConfig) -> UserError:
    """``key`` is not in the config: the closest key of ``node`` (its parent), or the keys it takes."""
    parent, _, leaf = key.rpartition(".")
    known = [str(k) for k in node if not str(k).startswith("_") and str(k) not in ("hydra", leaf)]
    if close := difflib.get_close_matches(leaf, known, n=1):
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    else:
        target = f" ({node._target_})" if "_target_" in node else ""
        hint = f"{parent or 'the config'}{target} takes {', '.join(known)}."
    return UserError(f"{key} is not a setting of this run: {hint} Fix it on the command line.")


def _targets(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """The key of each node that names its target, and the target: in the config as written (unresolved: it may
    name the run's dir, which the check comes before)."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield prefix, node["_target_"]
        for key, value in node.items():
            if prefix or key not in (*FREE, "hydra"):  # callbacks and loggers check their own arguments
                yield from _targets(value, f"{prefix}{key}.")


def _number_kind(annotation: Any) -> type | None:
    """int or float, for a parameter of that type, optional or not; None for any other."""
    kinds = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def expected_of(node: DictConfig, key: str) -> str:
    """What the key ``key`` of ``node`` takes, in words, from its target's signature."""
    found = {p.name: p for p in parameters(node._target_)} if "_target_" in node else {}
    if key not in found:
        return "a value of another type"
    kind = _number_kind(found[key].annotation) or found[key].annotation
    return expected(kind, found[key].constraints + CONSTRAINTS.get(node._target_, {}).get(key, ()))


def check_values(cfg: DictConfig) -> None:
    """No key added where the config takes none; each node's values within the ranges and choices its target
    declares (and :data:`CONSTRAINTS` for others); the app's own keys. What a sweep's jobs share is checked so."""
    _check_overrides(cfg)
    for key, (kind, constraints) in APP_KEYS.items():
        if key in cfg and not satisfies(cfg[key], kind, constraints):
            raise invalid(key, cfg[key], expected(kind, constraints))
    for prefix, target in _targets(OmegaConf.to_container(cfg)):
        declared = {p.name: p for p in parameters(target)}
        constraints_of = {p.name: p.constraints for p in declared.values() if p.constraints}
        node = cfg
        for part in prefix.split(".")[:-1]:
            node = node[part]
        for name, constraints in (constraints_of | CONSTRAINTS.get(target, {})).items():
            kind = _number_kind(declared[name].annotation) if name in declared else None
            value = node.get(name)
            # an optional number left to its default, None: its class's
            unset = value is None and name in declared and declared[name].default is None and not _choices(constraints)
            if name in node and not unset and not satisfies(value, kind, constraints):
                raise invalid(prefix + name, value, expected(kind, constraints))


def _check_overrides(cfg: DictConfig) -> None:
    """The command line's own keys: none added with ``+`` but a callback's or a logger's (every other key a run takes
    is in its config), and each ``${...}`` it gives names a key or a resolver that exists."""
    hydra = cfg.get("hydra") or (HydraConfig.get() if HydraConfig.initialized() else None)
    if hydra is None:  # composed outside a Hydra run
        return
    groups = hydra.runtime.choices
    given = OmegaConf.to_container(hydra.overrides.task)  # as typed: their ${...} unresolved
    for override in OverridesParser.create().parse_overrides(given):
        key = override.key_or_group
        if override.is_add() and key.split(".")[0] not in FREE and key not in groups:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in {p.name for p in parameters(node.get("_target_", ""))}:
                raise UserError(
                    f"+{key} adds a key, and {key} is one already: set it without the +. Fix it on the command line."
                )
            raise unknown_key(key, node)
        if key not in groups and "${" in override.input_line:
            try:
                OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            except (InterpolationKeyError, UnsupportedInterpolationType) as e:  # not a resolver's own failure:
                # ${hydra:...} resolves in each job, not before the sweep
                reason = str(e).split("\n", 1)[0]  # without OmegaConf's lines on the node
                raise UserError(f"{key} does not resolve: {reason}. Fix it on the command line.") from None


def _check_batch_limits(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """Each stage's ``trainer.limit_<stage>_batches``: a number of batches, a fraction of them, or null for all (a
    test of none tests nothing); not a fraction that leaves none, which Lightning refuses once the data is loaded."""
    for stage in stages:
        least, limit = int(stage == "test"), cfg.trainer[f"limit_{stage}_batches"]
        fraction = isinstance(limit, float) and (limit > 0 if least else limit >= 0) and limit <= 1
        if not (limit is None or (_whole(limit) and limit >= least) or fraction):
            fractions = "a fraction above 0 up to 1" if least else "a fraction from 0 to 1"
            batches = "a number of batches" + (" of at least 1" if least else "")
            raise invalid(f"trainer.limit_{stage}_batches", limit, f"{batches}, {fractions}, or null for all")
    sizes = cfg.data.expected_sizes or SPLIT_SIZES
    n_test = sizes["test"]
    images = {"test": n_test}
    if "train" in stages:  # without a hold-out, val is the test set
        val_size = cfg.data.val_size
        images |= {"train": sizes["train"] - val_size, "val": val_size or n_test}
    for stage in stages:
        limit = cfg.trainer[f"limit_{stage}_batches"]
        batches = -(-images[stage] // cfg.data.batch_size)
        if isinstance(limit, float) and limit > 0 and int(limit * batches) == 0:
            expected = f"at least 1/{batches}: an epoch has {batches} {stage} batches"
            raise invalid(f"trainer.limit_{stage}_batches", limit, expected)


def writable(path: str | Path, what: str, key: str, room: bool = False) -> None:
    """``path`` (the value of ``key``), or the nearest folder above it that exists, can be written to; with ``room``,
    its disk has room for a run's config, first checkpoints and logs (:data:`MIN_FREE_BYTES`)."""
    place = Path(path).expanduser().absolute()
    while not place.exists():
        place = place.parent
    # a disk of no size is no disk for files (/proc, /sys), whatever the permissions say
    disk = shutil.disk_usage(place)
    if not os.access(place, os.W_OK) or not place.is_dir() or disk.total == 0:
        raise UserError(
            f"{what} ({key}) {path} cannot be written to ({place} is not a writable folder: it is read-only, or not "
            f"a folder). Give a writable place on the command line: {key}=<dir>."
        )
    if room and disk.free < MIN_FREE_BYTES:
        raise DiskFull(
            f"The disk of {what.lower()} ({key}) {path} is full ({disk.free // 1024} kB free): the run could not write "
            f"its config, checkpoints and logs. Free some space, or give another place: {key}=<dir>."
        )


def multi_node_refusal(num_nodes: int) -> UserError:
    return UserError(
        f"trainer.num_nodes={num_nodes} needs a launcher that starts the processes of every node, and this run "
        f"(or a multirun with a local launcher) starts only this node's. On a SLURM cluster use "
        f"hydra/launcher=submitit_slurm with hydra.launcher.nodes={num_nodes} and "
        f"hydra.launcher.tasks_per_node=<devices>, or start train.py with torchrun on every node."
    )


def devices_asked(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for: a number, a list of ids or ``"0,1"``; None for all (auto, -1)."""
    if isinstance(devices, ListConfig | list):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if str(devices) in ("auto", "-1"):
        return None
    if not str(devices).isdigit():
        raise invalid("trainer.devices", devices, "a number of devices, a list of device ids such as [0,1], or auto")
    return int(devices)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a SLURM or taskset allocation sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_machine(trainer: DictConfig) -> None:
    """Refuse an accelerator this machine lacks, more GPUs than it has, bf16 on a GPU without it, and more CPU
    processes than it has cores."""
    asked = devices_asked(trainer.devices)
    import torch  # only once every check without it has passed

    gpus = torch.cuda.device_count()
    available = {"gpu": gpus > 0, "cuda": gpus > 0, "mps": torch.backends.mps.is_available()}
    if not available.get(trainer.accelerator, True):
        raise UserError(
            f"trainer.accelerator={trainer.accelerator} asks for a device this machine does not have (torch finds "
            f"{gpus} CUDA GPUs{', and no MPS' if trainer.accelerator == 'mps' else ''}). Leave trainer.accelerator "
            f"out (auto: a GPU when there is one), or use trainer.accelerator=cpu."
        )
    if trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and gpus > 0):
        if asked is not None and asked > gpus:
            raise UserError(
                f"trainer.devices={trainer.devices} asks for {asked} GPUs, and this machine has {gpus}. Use "
                f"trainer.devices={gpus} or fewer, or trainer.devices=auto for all of them."
            )
        if str(trainer.get("precision")).startswith("bf16") and not torch.cuda.is_bf16_supported(False):
            raise UserError(
                f"trainer.precision={trainer.precision}: this machine's GPU has no bfloat16. Use "
                f"trainer.precision=16-mixed, or 32-true."
            )
    elif trainer.accelerator in ("cpu", "auto") and asked is not None and asked > (cores := usable_cores()):
        raise UserError(
            f"trainer.devices={trainer.devices} asks for {asked} processes on the CPU, and this process may use "
            f"{cores} cores: they would share them, each slower than alone. Use trainer.devices={cores} or fewer."
        )


def _check_data(data: DictConfig) -> None:
    """The data folder can be written to, and, with the download off, the data is there to be read."""
    writable(data.root, "The data folder", "data.root")
    places = as_list(data.get("search_dirs"))
    if not data.get("download", True) and (missing := unfound(data.root, places)):
        raise unavailable(data.root, places, missing, "the download is off (data.download=false)")


def as_list(value: Any) -> list[Any]:
    """A command-line value as a list: ``a.jpg`` and ``[a.jpg,b/]`` alike."""
    if value is None:
        return []
    return list(value) if isinstance(value, ListConfig | list | tuple) else [value]


def _given_checkpoint(cfg: DictConfig) -> None:
    """eval.py and predict.py cannot do without ``ckpt_path``."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            "No checkpoint given: add ckpt_path=<run dir>/checkpoints/last.ckpt (training runs are under "
            "logs/train/runs/)."
        )
    check_checkpoint(cfg.ckpt_path)


def _never_validated(cfg: DictConfig) -> str | None:
    """Why a run would end before its first validation, at the end of epoch ``check_val_every_n_epoch``; for
    ``max_steps``, where that is known before the run: its data's size is expected, and it trains in one process."""
    trainer, n_train = cfg.trainer, (cfg.data.expected_sizes or {}).get("train")
    first = trainer.check_val_every_n_epoch
    if trainer.limit_val_batches == 0:
        return "trainer.limit_val_batches=0 turns validation off"
    if trainer.val_check_interval is not None or first is None:  # validation within epochs
        return None
    if trainer.max_epochs < first:
        return f"trainer.max_epochs={trainer.max_epochs} ends training before epoch {first}, the first to validate"
    one_process = str(trainer.devices) == "1" and trainer.num_nodes == 1 and trainer.strategy == "auto"
    if trainer.max_steps == -1 or not n_train or not one_process:
        return None
    steps = first * -(-_train_batches(cfg, n_train - cfg.data.val_size) // trainer.accumulate_grad_batches)
    if trainer.max_steps < steps:
        return f"trainer.max_steps={trainer.max_steps} ends training before its first validation (at step {steps})"
    return None


def _train_batches(cfg: DictConfig, images: int) -> int:
    """The training batches of an epoch, as Lightning counts them under ``limit_train_batches``."""
    batches, limit = -(-images // cfg.data.batch_size), cfg.trainer.limit_train_batches
    if isinstance(limit, float):
        return int(batches * limit)
    return batches if limit is None else min(batches, limit)


def _check_train(cfg: DictConfig) -> None:
    always = Path(cfg.paths.root_dir) / "conf" / "callbacks" / "always.yaml"  # what every callbacks= choice has
    names = OmegaConf.load(always).keys() if always.is_file() else ()
    if missing := [name for name in names if name not in (cfg.callbacks or {})]:
        raise UserError(
            f"The run lacks the callbacks {', '.join(missing)}, which every run has (conf/callbacks/always.yaml): "
            f"the epoch history and the checkpoints come from them. Leave them in callbacks."
        )
    if not (isinstance(cfg.tags, ListConfig) and all(isinstance(tag, str) and tag for tag in cfg.tags)):
        raise invalid("tags", cfg.tags, "a list of words, such as [baseline,lr-test]")
    n_train = (cfg.data.expected_sizes or SPLIT_SIZES)["train"]
    if not 0 <= cfg.data.val_size < n_train:
        raise invalid(
            "data.val_size",
            cfg.data.val_size,
            f"a whole number from 0 to {n_train - 1} (0 validates on the test set, as the chapter does)",
        )
    if cfg.impl._target_ == SCRATCH_MODEL and cfg.optim._target_ != SCRATCH_OPTIMIZER:
        raise UserError(
            f"impl=scratch trains with its hand-written SGD (optim=scratch_sgd, which impl=scratch selects), so it "
            f"cannot use the optimizer {cfg.optim._target_}. Leave optim= out with impl=scratch, or use impl=concise "
            f"for other optimizers."
        )
    _check_batch_limits(cfg, ("train", "val", "test"))
    if cfg.trainer.overfit_batches:
        raise UserError(
            f"trainer.overfit_batches={cfg.trainer.overfit_batches}: Lightning would swap the DataModule's batches for "
            f"single images, which its in-memory batches cannot take. To overfit a few batches, train on them alone: "
            f"trainer.limit_train_batches=2 trainer.max_epochs=50."
        )
    if cfg.test_ckpt == "best" and (unvalidated := _never_validated(cfg)):
        raise UserError(
            f"test_ckpt=best tests the checkpoint with the best val/acc, and {unvalidated}, so none would be chosen. "
            f"Use test_ckpt=last, or let validation run."
        )
    if cfg.test_ckpt not in ("best", "last"):
        if not (cfg.test_ckpt.endswith(".ckpt") and Path(cfg.test_ckpt).is_file()):
            raise invalid("test_ckpt", cfg.test_ckpt, "best (by val/acc), last, or the path of an existing .ckpt file")
        check_checkpoint(cfg.test_ckpt, cfg.impl._target_)
    if not cfg.train and not (cfg.ckpt_path and cfg.test):
        raise UserError(
            "train=false tests the checkpoint ckpt_path as it is, without training it: add "
            "ckpt_path=<run dir>/checkpoints/last.ckpt, and leave test=false out. (eval.py does the same.)"
        )
    if cfg.ckpt_path:  # resumed, or tested as it is (train=false)
        check_checkpoint(cfg.ckpt_path, cfg.impl._target_, resume=cfg.train)
    _check_data(cfg.data)


def _check_eval(cfg: DictConfig) -> None:
    _check_batch_limits(cfg, ("test",))
    trainer = {k: cfg.trainer[k] for k in ("strategy", "devices", "num_nodes")}
    if trainer != {"strategy": "auto", "devices": 1, "num_nodes": 1}:
        raise UserError(
            f"eval.py tests in one process on one device, and this run asks for {trainer} (trainer=ddp or "
            f"trainer.devices): Lightning would start the other processes by running eval.py again, inside this "
            f"run's directory. Leave trainer=ddp and trainer.devices out: the test set takes seconds on one device."
        )
    _check_data(cfg.data)
    _given_checkpoint(cfg)


def _check_predict(cfg: DictConfig) -> None:
    if not as_list(cfg.images) and not as_list(cfg.indices):
        raise UserError(
            "Nothing to predict: give images=a.png or images=[a.png,photos/] (files or folders), or "
            "indices=5 or indices=[0,1,2] (test images)."
        )
    if not all(_whole(i) for i in as_list(cfg.indices)):
        given = list(cfg.indices) if isinstance(cfg.indices, ListConfig) else cfg.indices
        raise invalid("indices", given, "a test-image number, or a list of them such as [0,1,2]")
    for path in image_files(as_list(cfg.images)):
        open_image(path).close()  # its header: a file that is no image, or too large, is refused here
    if as_list(cfg.indices):
        check_indices(as_list(cfg.indices), (cfg.data.expected_sizes or {}).get("test"))
        _check_data(cfg.data)
    _given_checkpoint(cfg)


def check_indices(indices: list[int], n_test: int | None) -> None:
    """Test-image numbers, from 0 to ``n_test - 1`` (where the test set's size is known)."""
    if bad := [i for i in indices if i < 0 or (n_test is not None and i >= n_test)]:
        numbered = (
            f"the test set has {n_test} images, numbered 0 to {n_test - 1}"
            if n_test
            else "test images are numbered from 0"
        )
        raise UserError(f"indices={bad} are out of range: {numbered}. Fix it on the command line.")


APP_CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "train": _check_train,
    "eval": _check_eval,
    "predict": _check_predict,
}


def check_config(cfg: DictConfig, app: str, machine: bool = True) -> None:
    """Refuse, as a :class:`UserError`, a config of ``app`` (train, eval or predict) that cannot run as asked;
    ``machine=False`` leaves out :func:`check_machine`, the check of this machine's devices."""
    try:
        check_values(cfg)
        APP_CHECKS[app](cfg)
        if machine and app != "predict":
            check_machine(cfg.trainer)
    except InterpolationResolutionError as e:  # a ${...} of the command line's that names nothing, or a wrong type
        reason = str(e.msg).split("\n", 1)[0]  # without OmegaConf's lines on the node
        raise UserError(f"{e.full_key} does not resolve: {reason}. Fix it on the command line.") from None
