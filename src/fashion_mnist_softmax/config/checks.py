"""Check a composed config once, before its run dir exists: keys and types, ranges, and what cannot run.

:func:`check_config` is the one check. A single run calls it from a Hydra callback before Hydra writes
anything (:mod:`fashion_mnist_softmax.run.run_dirs`); each job of a multirun at its start; the fused
launcher each job as it composes it, and the machine once for each group. Past it, ``train()``, ``evaluate()``
and ``predict()`` trust the config.
torch is imported only to read a checkpoint the config names and, once every other check has passed, to see the
machine's devices, so that a mistake is reported within a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, ValidationError

from fashion_mnist_softmax.config.schema import APPS, TARGETS, ScratchSGDConfig
from fashion_mnist_softmax.data.images import image_files
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.models import MODELS
from fashion_mnist_softmax.run.checkpoints import check_checkpoint

FASHION_MNIST_TRAIN_SIZE, FASHION_MNIST_TEST_SIZE = 60000, 10000
ALWAYS = ("epoch_summary", "stop_on_diverged_loss", "best_checkpoint", "last_checkpoint")  # train() needs them
SCRATCH_SGD = ScratchSGDConfig._target_


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _batches(v: Any, least: int) -> bool:
    """None for all, a number of batches of at least ``least``, or a fraction of the epoch (above 0 if least is)."""
    fraction = isinstance(v, float) and (v > 0 if least else v >= 0) and v <= 1
    return v is None or (_whole(v) and v >= least) or fraction


# key: (the check of its typed value, what the value must be); a key the config lacks (Adam has no momentum) is
# not checked. Types are the schema's: the words here also name the type, for a value of the wrong one.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295"),
    "data.batch_size": (lambda v: v >= 1, "a whole number of at least 1 (the chapter uses 256)"),
    "data.normalize": (lambda v: True, "true or false"),
    "data.download": (lambda v: True, "true or false"),
    "optim.lr": (lambda v: math.isfinite(v) and v > 0, "a number greater than 0 (the chapter uses 0.1)"),
    "optim.momentum": (lambda v: 0 <= v < 1, "a number from 0 up to, not including, 1"),
    "optim.weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a number of at least 0"),
    "trainer.max_epochs": (lambda v: v >= 1, "a whole number of at least 1"),
    "trainer.max_steps": (lambda v: v >= -1, "a whole number, or -1 for no limit"),
    "trainer.accumulate_grad_batches": (lambda v: v >= 1, "a whole number of at least 1"),
    "trainer.gradient_clip_val": (
        lambda v: v is None or (math.isfinite(v) and v >= 0),
        "a number of at least 0, or null",
    ),
    "trainer.log_every_n_steps": (lambda v: v >= 0, "a whole number of at least 0"),
    "trainer.strategy": (lambda v: v in ("auto", "ddp"), "auto (one process) or ddp (trainer=ddp)"),
    "trainer.accelerator": (lambda v: v in ("auto", "cpu", "gpu", "cuda", "mps"), "auto, cpu, gpu (cuda) or mps"),
    "trainer.precision": (
        lambda v: v in ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
        "32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true",
    ),
    **{
        f"trainer.limit_{stage}_batches": (
            lambda v: _batches(v, 0),
            "a number of batches, a fraction from 0 to 1, or null for all",
        )
        for stage in ("train", "val")
    },
    "trainer.limit_test_batches": (  # every run ends with a test
        lambda v: _batches(v, 1),
        "a number of batches of at least 1, a fraction above 0 up to 1, or null for all",
    ),
    "top_k": (lambda v: v >= 1, "a whole number of at least 1"),
}
TYPES = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "String": "text"}


def invalid(key: str, value: Any, expected: str) -> UserError:
    shown = "null" if value is None else repr(value)
    return UserError(f"{key}={shown} is not valid: it must be {expected}. Fix it on the command line.")


def unknown_key(key: str, node: DictConfig) -> UserError:
    """``key`` is not in the config: the closest key of ``node`` (its parent), or the keys it takes; or, where the
    node's schema takes it, how to add it (Hydra sets a key that the YAML files leave out only with a +)."""
    parent, _, leaf = key.rpartition(".")
    schema = TARGETS.get(node.get("_target_"))
    fields = [f.name for f in dataclasses.fields(schema)] if schema else [str(k) for k in node if k != "hydra"]
    if schema is not None and leaf in fields:
        return UserError(
            f"{key} is left out of this run's config, though {node._target_} takes it: set it with a + before it, "
            f"as +{key}=<value>."
        )
    known = [k for k in fields if not k.startswith("_")]
    if close := difflib.get_close_matches(leaf, known, n=1):
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    else:
        target = f" ({node._target_})" if "_target_" in node else ""
        hint = f"{parent or 'the config'}{target} takes {', '.join(known)}."
    return UserError(f"{key} is not a setting of this run: {hint} Fix it on the command line.")


@functools.cache
def _structured(schema: type) -> DictConfig:
    """The schema as a config, made once: a merge copies it, and a sweep checks each of its jobs."""
    return OmegaConf.structured(schema)


def _merged(schema: type, node: DictConfig, prefix: str = "") -> DictConfig:
    """``node`` merged into ``schema``; an unknown key or a value of the wrong type as a :class:`UserError`."""
    try:
        return OmegaConf.merge(_structured(schema), node)
    except ConfigKeyError as e:
        parent = e.full_key.rpartition(".")[0]
        fields = _structured(schema)
        raise unknown_key(prefix + e.full_key, OmegaConf.select(fields, parent) if parent else fields) from None
    except ValidationError as e:
        key, value = prefix + e.full_key, getattr(e, "value", None)
        if key in RULES:
            raise invalid(key, value, RULES[key][1]) from None
        found = re.search(r"converted to (\w+)", str(e))
        raise invalid(key, value, TYPES.get(found.group(1), "another type") if found else "a value, not null") from None


def typed(cfg: DictConfig, app: str) -> DictConfig:
    """``cfg`` (without its ``hydra`` node) merged into the schema of ``app`` and of its optimizer and scheduler."""
    node = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    out = _merged(APPS[app], node)
    for key in ("optim", "scheduler"):
        if isinstance(sub := node.get(key), DictConfig) and sub.get("_target_") in TARGETS:
            out[key] = _merged(TARGETS[sub._target_], sub, prefix=f"{key}.")
    return out


def _check_rules(cfg: DictConfig, given: DictConfig) -> None:
    """Each rule on its typed value; and the value as given of the same type (the schema would read ``no`` as
    false and ``'5'`` as 5, where the run itself gets the string)."""
    for key, (check, expected) in RULES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node:
            value, raw = node[leaf], OmegaConf.select(given, key)
            if (
                not check(value)
                or isinstance(value, bool) != isinstance(raw, bool)
                or isinstance(raw, str) != isinstance(value, str)
            ):
                raise invalid(key, raw, expected)


def _check_batch_fractions(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """A fraction of a stage's batches that leaves none, which Lightning would refuse only once the data is loaded."""
    sizes = cfg.data.expected_sizes or {}
    n_test = sizes.get("test") or FASHION_MNIST_TEST_SIZE
    images = {"test": n_test}
    if "train" in stages:  # without a hold-out, val is the test set
        val_size = cfg.data.val_size
        images |= {"train": (sizes.get("train") or FASHION_MNIST_TRAIN_SIZE) - val_size, "val": val_size or n_test}
    for stage in stages:
        limit = cfg.trainer[f"limit_{stage}_batches"]
        batches = -(-images[stage] // cfg.data.batch_size)
        if isinstance(limit, float) and limit > 0 and int(limit * batches) == 0:
            expected = f"at least 1/{batches}: an epoch has {batches} {stage} batches"
            raise invalid(f"trainer.limit_{stage}_batches", limit, expected)


def writable(path: str | Path, what: str) -> None:
    """``path``, or the nearest folder above it that exists, can be written to."""
    place = Path(path).expanduser().absolute()
    while not place.exists():
        place = place.parent
    if not os.access(place, os.W_OK) or not place.is_dir():
        raise UserError(
            f"{what} {path} cannot be written to ({place} is not a writable folder: it is read-only, or not a "
            f"folder). Give a writable place on the command line, e.g. paths.log_dir=<dir> or data.root=<dir>."
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


def check_machine(trainer: DictConfig) -> None:
    """Refuse an accelerator this machine lacks, more GPUs than it has, and bf16 on a GPU without it."""
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


def as_list(value: Any) -> list[Any]:
    """A command-line value as a list: ``a.jpg`` and ``[a.jpg,b/]`` alike."""
    if value is None:
        return []
    return list(value) if isinstance(value, ListConfig | list | tuple) else [value]


def _given_checkpoint(cfg: DictConfig, resume_impl: str | None = None) -> None:
    """eval.py and predict.py cannot do without ``ckpt_path``; train.py resumes it (``resume_impl``)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            "No checkpoint given: add ckpt_path=<run dir>/checkpoints/last.ckpt (training runs are under "
            "logs/train/runs/)."
        )
    check_checkpoint(cfg.ckpt_path, resume_impl, resume=resume_impl is not None)


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
    if missing := [name for name in ALWAYS if name not in (cfg.callbacks or {})]:
        raise UserError(
            f"The run lacks the callbacks {', '.join(missing)}, which every run has (conf/callbacks/always.yaml): "
            f"the epoch history and the checkpoints come from them. Leave them in callbacks."
        )
    n_train = (cfg.data.expected_sizes or {}).get("train") or FASHION_MNIST_TRAIN_SIZE
    if not 0 <= cfg.data.val_size < n_train:
        raise invalid(
            "data.val_size",
            cfg.data.val_size,
            f"a whole number from 0 to {n_train - 1} (0 validates on the test set, as the chapter does)",
        )
    if MODELS.get(cfg.impl._target_) == "scratch" and cfg.optim._target_ != SCRATCH_SGD:
        raise UserError(
            f"impl=scratch trains with its hand-written SGD (optim=scratch_sgd, which impl=scratch selects), so it "
            f"cannot use the optimizer {cfg.optim._target_}. Leave optim= out with impl=scratch, or use impl=concise "
            f"for other optimizers."
        )
    _check_batch_fractions(cfg, ("train", "val", "test"))
    if cfg.test_ckpt == "best" and (unvalidated := _never_validated(cfg)):
        raise UserError(
            f"test_ckpt=best tests the checkpoint with the best val/acc, and {unvalidated}, so none would be chosen. "
            f"Use test_ckpt=last, or let validation run."
        )
    if cfg.test_ckpt not in ("best", "last"):
        if not (cfg.test_ckpt.endswith(".ckpt") and Path(cfg.test_ckpt).is_file()):
            raise invalid("test_ckpt", cfg.test_ckpt, "best (by val/acc), last, or the path of an existing .ckpt file")
        check_checkpoint(cfg.test_ckpt, cfg.impl._target_)
    if cfg.ckpt_path:
        _given_checkpoint(cfg, resume_impl=cfg.impl._target_)
    writable(cfg.data.root, "The data folder (data.root)")


def _check_eval(cfg: DictConfig) -> None:
    _check_batch_fractions(cfg, ("test",))
    trainer = {k: cfg.trainer[k] for k in ("strategy", "devices", "num_nodes")}
    if trainer != {"strategy": "auto", "devices": 1, "num_nodes": 1}:
        raise UserError(
            f"eval.py tests in one process on one device, and this run asks for {trainer} (trainer=ddp or "
            f"trainer.devices): Lightning would start the other processes by running eval.py again, inside this "
            f"run's directory. Leave trainer=ddp and trainer.devices out: the test set takes seconds on one device."
        )
    writable(cfg.data.root, "The data folder (data.root)")
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
    image_files(as_list(cfg.images))
    if as_list(cfg.indices):
        writable(cfg.data.root, "The data folder (data.root)")
    _given_checkpoint(cfg)


COMBINATIONS: dict[str, Callable[[DictConfig], None]] = {
    "train": _check_train,
    "eval": _check_eval,
    "predict": _check_predict,
}


def check_config(cfg: DictConfig, app: str, machine: bool = True) -> None:
    """Refuse, as a :class:`UserError`, a config of ``app`` (train, eval or predict) that cannot run as asked;
    ``machine=False`` leaves out :func:`check_machine`, the check of this machine's devices."""
    try:
        checked = typed(cfg, app)
        _check_rules(checked, cfg)
        COMBINATIONS[app](checked)
        if machine and app != "predict":
            check_machine(checked.trainer)
    except InterpolationResolutionError as e:  # a ${...} of the command line's that names nothing, or a wrong type
        reason = str(e.msg).split("\n", 1)[0]  # without OmegaConf's lines on the node
        raise UserError(f"{e.full_key} does not resolve: {reason}. Fix it on the command line.") from None
