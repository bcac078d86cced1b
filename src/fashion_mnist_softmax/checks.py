"""Fail early and clearly: config values, checkpoints, a loss that explodes, and interrupted runs."""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fashion_mnist_softmax.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.scratch import ScratchSoftmaxRegression

IMPLS: dict[str, type[L.LightningModule]] = {
    ScratchSoftmaxRegression.name: ScratchSoftmaxRegression,
    ConciseSoftmaxRegression.name: ConciseSoftmaxRegression,
}
IMPLS_BY_TARGET = {f"{cls.__module__}.{cls.__qualname__}": name for name, cls in IMPLS.items()}
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
        (
            "data.batches_per_step",
            lambda v: _whole(v) and v >= 1,
            "a whole number of at least 1 (SGD steps per training step)",
        ),
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
    manual = "each training step takes several SGD steps with Lightning's manual optimization (data.batches_per_step)"
    if (clip := OmegaConf.select(cfg, "trainer.gradient_clip_val")) is not None and clip > 0:
        raise UserError(
            f"trainer.gradient_clip_val={clip} is not supported: {manual}, and Lightning clips gradients only in "
            f"automatic optimization. Leave it out; softmax regression at the chapter's learning rates does not "
            f"need clipping."
        )
    if (accumulate := OmegaConf.select(cfg, "trainer.accumulate_grad_batches")) not in (None, 1):
        raise UserError(
            f"trainer.accumulate_grad_batches={accumulate} is not supported: {manual}, and Lightning accumulates "
            f"gradients only in automatic optimization. To average the gradient over more images, raise "
            f"data.batch_size instead."
        )
    if cfg.get("ckpt_path"):
        check_impl(load_checkpoint(cfg.ckpt_path), cfg.ckpt_path, impl_name(cfg))
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``: tensors and plain data only, never code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}: the file does not exist. Give ckpt_path=<run dir>/checkpoints/last.ckpt "
            f"or another .ckpt file in a run's checkpoints/ folder."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler fails on garbage in many ways
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("\n")[0].split(". ")[0][:160]
        raise UserError(
            f"The checkpoint {path} cannot be loaded: it is truncated, corrupted, not a PyTorch checkpoint, or "
            f"holds Python objects, which weights-only loading refuses to run ({type(e).__name__}: {first_line}). "
            f"Use another checkpoint, e.g. last.ckpt or the best one in the same folder."
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= ckpt.keys():
        raise UserError(
            f"The file {path} is not a checkpoint of this project: it has no Lightning state_dict and "
            f"hyper_parameters. Give a .ckpt file written by train.py."
        )
    return ckpt


def impl_of(ckpt: dict[str, Any], path: str | Path) -> str:
    """The implementation ("scratch" or "concise") whose parameters a checkpoint holds."""
    keys = set(ckpt["state_dict"])
    for name, cls in IMPLS.items():
        try:
            with torch.device("meta"):  # no memory, and no draw from the seeded RNG
                expected = set(cls(**ckpt["hyper_parameters"]).state_dict())
        except TypeError:
            continue
        if keys == expected:
            return name
    raise UserError(
        f"The checkpoint {path} holds parameters {sorted(keys)}, which fit neither implementation "
        f"({', '.join(IMPLS)}). Give a .ckpt file written by train.py."
    )


def impl_name(cfg: DictConfig) -> str | None:
    """The implementation that ``cfg.impl`` (a node of the ``impl`` config group, or None) selects."""
    return IMPLS_BY_TARGET.get(cfg.impl._target_) if cfg.get("impl") else None


def check_impl(ckpt: dict[str, Any], path: str | Path, expected: str | None) -> str:
    """Return the checkpoint's implementation; a clear error if it is not ``expected``."""
    found = impl_of(ckpt, path)
    if expected is not None and found != expected:
        raise UserError(
            f"The checkpoint {path} holds a {found} model, but impl={expected} was asked for. "
            f"Use impl={found} with this checkpoint, or a checkpoint of a {expected} run."
        )
    return found


class StopOnDivergedLoss(L.Callback):
    """Stops training at the first non-finite training loss, or one above ``max_loss``.

    Cross-entropy over ten classes starts at ln 10 ≈ 2.3. The stable log-sum-exp keeps it finite for
    a long while after training has diverged (``optim.lr=1e30`` gives losses near 1e31), so a loss
    above ``max_loss`` stops the run too. Either way the run stops before that epoch's checkpoints.

    Reading losses on the host makes the host wait for the device. On the CPU that costs under a
    microsecond, so each training step's losses are checked at once. On an accelerator they stay on
    the device and are read together every ``check_every`` (50) training steps and at each epoch's
    last batch. Either way the error names the first bad SGD step (``global_step`` counts from 1).
    """

    def __init__(self, max_loss: float = 1e6, check_every: int | None = None) -> None:
        self.max_loss, self.check_every = max_loss, check_every  # None: 1 on the CPU, 50 on an accelerator
        self._losses: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """``outputs`` holds the loss of each SGD step that the training step took."""
        losses = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach().reshape(-1)
        self._losses.append(losses)
        every = self.check_every or (1 if losses.device.type == "cpu" else 50)
        if len(self._losses) < every and not trainer.is_last_batch:
            return
        losses, self._losses = torch.cat(self._losses).float().cpu(), []
        bad = (~(losses.abs() <= self.max_loss)).nonzero()  # NaN fails every comparison
        if len(bad):
            first = int(bad[0])
            self._stop(trainer, trainer.global_step - len(losses) + first + 1, float(losses[first]))

    def _stop(self, trainer: L.Trainer, step: int, loss: float) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        raise UserError(
            f"Training stopped: the loss diverged (a non-finite loss, or above {self.max_loss:g}) at epoch "
            f"{trainer.current_epoch + 1}, step {step}: loss {loss:g}. The likely cause is a learning rate that "
            f"is too high (optim.lr={lr:g}). Lower optim.lr (the chapter uses 0.1). Checkpoints from earlier "
            f"epochs are kept."
        )


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, save ``last.ckpt`` so that the run can be resumed.

    Lightning then finalises the loggers and exits: status 1 after SIGINT. After SIGTERM it raises
    a ``SystemExit`` without a status, which would read as success, so it gets 128 + SIGTERM.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        if isinstance(exception, SIGTERMException):
            exception.code = 128 + signal.SIGTERM
        pl_module.print(f"Interrupted: saved {self.path}. Resume with ckpt_path={self.path}")
