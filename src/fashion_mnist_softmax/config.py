"""Check a composed config before any work: each key's type and range, declared once, and what cannot run.

Nothing here imports torch or Lightning, so that a mistake is reported within a second of the command;
what a checkpoint holds is checked by :func:`fashion_mnist_softmax.checkpoints.check_checkpoint`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fashion_mnist_softmax.errors import UserError

FASHION_MNIST_TRAIN_SIZE, FASHION_MNIST_TEST_SIZE = 60000, 10000
SCRATCH, SCRATCH_SGD = "fashion_mnist_softmax.scratch.ScratchSoftmaxRegression", "fashion_mnist_softmax.scratch.SGD"


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return (_whole(v) or isinstance(v, float)) and math.isfinite(v)


ABSENT = object()  # a key the config lacks (Adam has no momentum), unlike one set to null


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or v is ABSENT or check(v)


def _absent_or(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is ABSENT or check(v)


# key: (the check, what the value must be); the checks of data.val_size depend on the data, below
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: _whole(v) and 0 <= v < 2**32, "a whole number from 0 to 4294967295"),
    "data.batch_size": (lambda v: _whole(v) and v >= 1, "a whole number of at least 1 (the chapter uses 256)"),
    "data.normalize": (lambda v: isinstance(v, bool), "true or false"),
    "data.download": (lambda v: isinstance(v, bool), "true or false"),
    "optim.lr": (lambda v: _real(v) and v > 0, "a number greater than 0 (the chapter uses 0.1)"),
    "optim.momentum": (_absent_or(lambda v: _real(v) and 0 <= v < 1), "a number from 0 up to, not including, 1"),
    "optim.weight_decay": (_absent_or(lambda v: _real(v) and v >= 0), "a number of at least 0"),
    "trainer.max_epochs": (lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    "trainer.max_steps": (lambda v: _whole(v) and v >= -1, "a whole number, or -1 for no limit"),
    "trainer.accumulate_grad_batches": (lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    "trainer.gradient_clip_val": (_optional(lambda v: _real(v) and v >= 0), "a number of at least 0, or null"),
    "trainer.log_every_n_steps": (lambda v: _whole(v) and v >= 0, "a whole number of at least 0"),
    "trainer.strategy": (lambda v: v in ("auto", "ddp"), "auto (one process) or ddp (trainer=ddp)"),
}
for _stage in ("train", "val"):
    RULES[f"trainer.limit_{_stage}_batches"] = (
        _optional(lambda v: (_whole(v) and v >= 0) or (_real(v) and 0 <= v <= 1)),
        "a number of batches, a fraction from 0 to 1, or null for all",
    )
RULES["trainer.limit_test_batches"] = (  # every run ends with a test
    _optional(lambda v: (_whole(v) and v >= 1) or (_real(v) and 0 < v <= 1)),
    "a number of batches of at least 1, a fraction above 0 up to 1, or null for all",
)


def _fail(key: str, value: Any, expected: str) -> UserError:
    shown = "null" if value is None else repr(value)
    return UserError(f"{key}={shown} is not valid: it must be {expected}. Fix it on the command line.")


def _check_rules(cfg: DictConfig, keys: list[str]) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        check, expected = RULES[key]
        if not check(value):
            raise _fail(key, None if value is ABSENT else value, expected)


def _check_batch_fractions(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """A fraction of a stage's batches that leaves none, which Lightning would refuse only once the data is loaded."""
    sizes = cfg.data.get("expected_sizes") or {}
    n_test = sizes.get("test") or FASHION_MNIST_TEST_SIZE
    images = {"test": n_test}
    if "train" in stages:  # train.py, whose data.val_size is checked by now; without a hold-out, val is the test set
        val_size = cfg.data.val_size
        images |= {"train": (sizes.get("train") or FASHION_MNIST_TRAIN_SIZE) - val_size, "val": val_size or n_test}
    for stage in stages:
        limit = OmegaConf.select(cfg, f"trainer.limit_{stage}_batches")
        batches = -(-images[stage] // cfg.data.batch_size)
        if isinstance(limit, float) and limit > 0 and int(limit * batches) == 0:
            expected = f"at least 1/{batches}: an epoch has {batches} {stage} batches"
            raise _fail(f"trainer.limit_{stage}_batches", limit, expected)


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


def check_train_config(cfg: DictConfig) -> None:
    """Reject values out of type or range, and combinations that cannot run, before any data is read."""
    _check_rules(cfg, list(RULES))
    n_train = (cfg.data.get("expected_sizes") or {}).get("train") or FASHION_MNIST_TRAIN_SIZE
    if not (_whole(cfg.data.val_size) and 0 <= cfg.data.val_size < n_train):
        raise _fail(
            "data.val_size",
            cfg.data.val_size,
            f"a whole number from 0 to {n_train - 1} (0 validates on the test set, as the chapter does)",
        )
    if cfg.impl._target_ == SCRATCH and cfg.optim._target_ != SCRATCH_SGD:
        raise UserError(
            f"impl=scratch trains with its hand-written SGD (optim=scratch_sgd, which impl=scratch selects), so it "
            f"cannot use the optimizer {cfg.optim._target_}. Leave optim= out with impl=scratch, or use impl=concise "
            f"for other optimizers."
        )
    _check_batch_fractions(cfg, ("train", "val", "test"))
    if cfg.test_ckpt == "best" and OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
        raise UserError(
            "test_ckpt=best tests the checkpoint with the best val/acc, and trainer.limit_val_batches=0 turns "
            "validation off, so none would be chosen. Use test_ckpt=last, or let validation run."
        )
    if cfg.test_ckpt not in ("best", "last") and not (
        str(cfg.test_ckpt).endswith(".ckpt") and Path(cfg.test_ckpt).is_file()
    ):
        raise _fail("test_ckpt", cfg.test_ckpt, "best (by val/acc), last, or the path of an existing .ckpt file")
    if cfg.get("ckpt_path"):
        existing_checkpoint(cfg.ckpt_path)
    writable(cfg.data.root, "The data folder (data.root)")


def multi_node_refusal(num_nodes: int) -> UserError:
    return UserError(
        f"trainer.num_nodes={num_nodes} needs a launcher that starts the processes of every node, and this run "
        f"(or a multirun with a local launcher) starts only this node's. On a SLURM cluster use "
        f"hydra/launcher=submitit_slurm with hydra.launcher.nodes={num_nodes} and "
        f"hydra.launcher.tasks_per_node=<devices>, or start train.py with torchrun on every node."
    )


def existing_checkpoint(path: str | Path) -> Path:
    """``path``, a file that exists; checked before torch is imported to read it."""
    if not Path(path).is_file():
        raise UserError(
            f"No checkpoint at {path}: the file does not exist. Give ckpt_path=<run dir>/checkpoints/last.ckpt "
            f"or another .ckpt file in a run's checkpoints/ folder."
        )
    return Path(path)


def given_ckpt_path(cfg: DictConfig) -> str:
    """``cfg.ckpt_path``, which eval.py and predict.py cannot do without."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            "No checkpoint given: add ckpt_path=<run dir>/checkpoints/last.ckpt (training runs are under "
            "logs/train/runs/)."
        )
    return str(cfg.ckpt_path)


def as_list(value: Any) -> list[Any]:
    """A command-line value as a list: ``a.jpg`` and ``[a.jpg,b/]`` alike."""
    if value is None:
        return []
    return list(value) if isinstance(value, ListConfig | list | tuple) else [value]


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(images: Any) -> list[Path]:
    """The files that ``images=`` names (one path, or a list), a named folder's images in name order."""
    files = []
    for name in as_list(images):
        path = Path(str(name)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(
                    f"The folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
                    f"Give image files or a folder of images."
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"The image {path} does not exist. Check the path given in images=.")
    return files


def check_eval_config(cfg: DictConfig) -> None:
    _check_rules(cfg, ["data.batch_size", "data.download", "trainer.limit_test_batches"])
    _check_batch_fractions(cfg, ("test",))
    trainer = {k: OmegaConf.select(cfg, f"trainer.{k}") for k in ("strategy", "devices", "num_nodes")}
    if trainer != {"strategy": "auto", "devices": 1, "num_nodes": 1}:
        raise UserError(
            f"eval.py tests in one process on one device, and this run asks for {trainer} (trainer=ddp or "
            f"trainer.devices): Lightning would start the other processes by running eval.py again, inside this "
            f"run's directory. Leave trainer=ddp and trainer.devices out: the test set takes seconds on one device."
        )
    writable(cfg.data.root, "The data folder (data.root)")
    existing_checkpoint(given_ckpt_path(cfg))


def check_predict_config(cfg: DictConfig) -> None:
    if not as_list(cfg.images) and not as_list(cfg.indices):
        raise UserError(
            "Nothing to predict: give images=a.png or images=[a.png,photos/] (files or folders), or "
            "indices=5 or indices=[0,1,2] (test images)."
        )
    if not all(_whole(i) for i in as_list(cfg.indices)):
        given = list(cfg.indices) if isinstance(cfg.indices, ListConfig) else cfg.indices  # not resolved: no run yet
        raise _fail("indices", given, "a test-image number, or a list of them such as [0,1,2]")
    if not (_whole(cfg.top_k) and cfg.top_k >= 1):
        raise _fail("top_k", cfg.top_k, "a whole number of at least 1")
    image_files(cfg.images)
    if as_list(cfg.indices):
        writable(cfg.data.root, "The data folder (data.root)")
    existing_checkpoint(given_ckpt_path(cfg))


CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "train": check_train_config,
    "eval": check_eval_config,
    "predict": check_predict_config,
}
