"""Check a composed config before any work: values out of range, and combinations that cannot run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from fashion_mnist_softmax.checkpoints import load_checkpoint, model_class
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.scratch import SGD, ScratchSoftmaxRegression

FASHION_MNIST_TRAIN_SIZE = 60000


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return (_whole(value) or isinstance(value, float)) and math.isfinite(value)


def check_train_config(cfg: DictConfig) -> None:
    """Reject out-of-range values before any data is read, and a checkpoint that cannot be resumed."""
    n_train = (cfg.data.get("expected_sizes") or {}).get("train") or FASHION_MNIST_TRAIN_SIZE
    rules = [
        ("data.batch_size", lambda v: _whole(v) and v >= 1, "a whole number of at least 1 (the chapter uses 256)"),
        ("optim.lr", lambda v: _real(v) and v > 0, "a number greater than 0 (the chapter uses 0.1)"),
        (
            "data.val_size",
            lambda v: _whole(v) and 0 <= v < n_train,
            f"a whole number from 0 to {n_train - 1} (0 validates on the test set, as the chapter does)",
        ),
        ("trainer.max_epochs", lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    ]
    for key, is_valid, expected in rules:
        value = OmegaConf.select(cfg, key)
        if not is_valid(value):
            raise UserError(f"{key}={value!r} is not valid: it must be {expected}. Fix it on the command line.")
    model = get_class(cfg.impl._target_)
    if model is ScratchSoftmaxRegression and get_class(cfg.optim._target_) is not SGD:
        raise UserError(
            f"impl=scratch trains with its hand-written SGD (optim=scratch_sgd, which impl=scratch selects), so it "
            f"cannot use the optimizer {cfg.optim._target_}. Leave optim= out with impl=scratch, or use impl=concise "
            f"for other optimizers."
        )
    if (strategy := OmegaConf.select(cfg, "trainer.strategy")) not in (None, "auto", "ddp"):
        raise UserError(
            f"trainer.strategy={strategy} is not supported: this project runs one process (strategy auto) or DDP "
            f"with one process per device, started by torch's elastic launcher (trainer=ddp). Use trainer=ddp."
        )
    if cfg.get("ckpt_path"):
        ckpt = load_checkpoint(cfg.ckpt_path)
        if (found := model_class(ckpt, cfg.ckpt_path)) is not model:
            raise UserError(
                f"The checkpoint {cfg.ckpt_path} holds a {found.name} model, but impl={model.name} was asked for. "
                f"Use impl={found.name} to resume it, or a checkpoint of a {model.name} run."
            )
    check_fresh_run_dir(Path(cfg.paths.output_dir), cfg.get("ckpt_path"))


def check_fresh_run_dir(run_dir: Path, ckpt_path: str | None) -> None:
    """Never train over another run's checkpoints, unless resuming that very run from its own checkpoint."""
    checkpoints = run_dir / "checkpoints"
    resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == checkpoints.resolve()
    if checkpoints.is_dir() and any(checkpoints.iterdir()) and not resuming_here:
        raise UserError(
            f"The run directory {run_dir} already holds the checkpoints of another run, which this run would "
            f"overwrite. Choose a new hydra.run.dir, or resume that run with ckpt_path={checkpoints}/last.ckpt."
        )


def given_ckpt_path(cfg: DictConfig) -> str:
    """``cfg.ckpt_path``, which eval.py and predict.py cannot do without."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            "No checkpoint given: add ckpt_path=<run dir>/checkpoints/last.ckpt (training runs are under "
            "logs/train/runs/)."
        )
    return str(cfg.ckpt_path)
