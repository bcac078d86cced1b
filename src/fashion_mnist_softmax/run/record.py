"""The run's record: each epoch's row and the scalars every logger gets (:class:`EpochSummary`), its
hyperparameters with its final metrics (:class:`HParams`), and its ``metrics.json`` (:func:`end_run`).

:class:`EpochSummary` reads a run only through what Lightning hands a callback (``trainer.callback_metrics``,
``trainer.loggers``, the epoch and step, the model), so that a fused sweep, which hands each of its members its own
values through the same channels, gets each member's record from this one implementation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from fashion_mnist_softmax.files import write_json_atomic
from fashion_mnist_softmax.run.metrics import (
    COMPLETED,
    EPOCH_TIME,
    HP_TEST_ACC,
    HP_TEST_LOSS,
    HP_VAL_ACC_BEST,
    METRICS_FILE,
    STATUS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_EPOCH_TIME,
    TRAIN_LOSS,
    TRAIN_LOSS_STEP,
    TRAIN_THROUGHPUT,
    VAL_ACC,
    VAL_ACC_BEST,
)


def fit_validation(trainer: L.Trainer) -> bool:
    """Whether the trainer is validating for its fit, not for a sanity check."""
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking


def logs_step(trainer: L.Trainer) -> bool:
    """Whether the training step that just ended logs its loss: every ``trainer.log_every_n_steps``."""
    every = trainer.log_every_n_steps
    return bool(every) and trainer.global_step % every == 0


def stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float]:
    """The epoch's metrics of ``stage`` (train, val or test) that the model logged, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


def log_metrics(loggers: Sequence[Logger], metrics: dict[str, float], step: int) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step)


class EpochSummary(L.Callback):
    """Keeps each epoch's row for ``metrics.json`` and writes the run's scalars to its loggers.

    At each epoch's end: the model's train and (if it validated) val metrics, ``val/acc_best`` (the history's
    best), the epoch's training time (validation excluded) and throughput, counted from the training loss's images
    so that nothing waits for the device; at the steps that ``log_every_n_steps`` picks, the training loss; after
    testing, the test metrics; when fitting starts, the model's hyperparameters. The history, and the time so far of
    an epoch stopped in its middle, are part of the checkpoint: a resumed run reports every epoch.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._elapsed, self._images = 0.0, 0  # of the current epoch, before this process's first step of it
        self._start: float | None = None  # of this process's part of the epoch
        self._train_time: float | None = None  # set when the epoch's training ends
        self._validated = False  # this epoch: a validation's metrics stay in callback_metrics until the next one

    @property
    def best(self) -> float | None:
        """The best ``val/acc`` so far; None before a validation."""
        accs = [row[VAL_ACC] for row in self.history if VAL_ACC in row]
        return max(accs) if accs else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(pl_module.hparams)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._images, self._start, self._train_time = 0.0, 0, time.perf_counter(), None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:  # resumed in the middle of an epoch: Lightning does not start the epoch again
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if logs_step(trainer):
            step_loss = {TRAIN_LOSS_STEP: float(outputs["loss"]), "epoch": trainer.current_epoch}
            log_metrics(trainer.loggers, step_loss, trainer.global_step - 1)

    def _running(self) -> float:
        return self._elapsed + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._train_time is None:  # stop the clock at validation
            self._train_time = self._running()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or fit_validation(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_time is None:
            self._train_time = self._running()
        metrics = stage_metrics(trainer, "train") | (stage_metrics(trainer, "val") if self._validated else {})
        self._validated = False
        self.history.append({"epoch": trainer.current_epoch + 1, **metrics, EPOCH_TIME: self._train_time})
        images = (self._images + int(trainer.lightning_module.train_loss.images)) * trainer.world_size
        scalars = metrics | ({VAL_ACC_BEST: self.best} if VAL_ACC in metrics else {})
        scalars |= {TRAIN_EPOCH_TIME: self._train_time, TRAIN_THROUGHPUT: images / self._train_time}
        log_metrics(trainer.loggers, scalars | {"epoch": trainer.current_epoch}, trainer.global_step - 1)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_metrics(trainer.loggers, stage_metrics(trainer, "test"), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        in_epoch = self._start is not None and self._train_time is None
        return {
            "history": self.history,
            "epoch_time_so_far": self._running() if in_epoch else 0.0,
            "epoch_images_so_far": self._images if in_epoch else 0,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self._elapsed, self._images = state_dict["epoch_time_so_far"], state_dict["epoch_images_so_far"]
        self._start = None


def epoch_summary(trainer: L.Trainer) -> EpochSummary:
    """The run's record among the trainer's callbacks (``conf/callbacks/always.yaml``: every run has it)."""
    return next(c for c in trainer.callbacks if isinstance(c, EpochSummary))


def epoch_line(row: dict[str, float]) -> str:
    """The chapter's line for an epoch."""
    return (
        f"epoch {row['epoch']}, loss {row.get(TRAIN_LOSS, math.nan):.4f}, "
        f"train acc {row.get(TRAIN_ACC, math.nan):.3f}, val acc {row.get(VAL_ACC, math.nan):.3f}"
    )


def test_line(tested: dict[str, float]) -> str:
    """A test's results, rounded for reading; ``metrics.json`` keeps them whole."""
    return f"test acc {tested[TEST_ACC]:.4f}, test loss {tested[TEST_LOSS]:.4f}"


def run_metrics(
    impl: str,
    seed: int,
    history: list[dict[str, float]],
    hparams: dict[str, Any],
    status: str = COMPLETED,
    tested: dict[str, float] | None = None,
    test_ckpt: str | None = None,
) -> dict[str, Any]:
    """A run's ``metrics.json``: its status, its test metrics (none for a run that was not tested), its best
    validation accuracy, its config and its history."""
    val_accs = [row[VAL_ACC] for row in history if VAL_ACC in row]
    return {
        "impl": impl,
        "seed": seed,
        STATUS: status,
        TEST_ACC: (tested or {}).get(TEST_ACC),
        TEST_LOSS: (tested or {}).get(TEST_LOSS),
        VAL_ACC_BEST: max(val_accs) if val_accs else None,
        "test_ckpt": None if test_ckpt is None else str(test_ckpt),
        "hparams": hparams,
        "history": history,
    }


def finish_loggers(loggers: Sequence[Logger], status: str) -> None:
    """Each logger writes what it holds (``status``: "success" or "failed"), and a W&B run ends: its process would
    end it at exit, but one process may hold several runs (a fused sweep's members, a notebook's runs)."""
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


def end_run(run_dir: Path, loggers: Sequence[Logger], metrics: dict[str, Any], status: str = "success") -> None:
    """The end of a run that did not fail: its loggers finish (``status``: "failed" for an interrupted one) and its
    ``metrics.json`` is written."""
    finish_loggers(loggers, status)
    write_json_atomic(run_dir / METRICS_FILE, metrics)


class HParams(L.Callback):
    """Logs ``hparams`` (name-value pairs) after testing: to TensorBoard with the final metrics, for its HParams tab;
    to the other loggers as the run's parameters, beside the test metrics they already have.

    Lightning's placeholder ``hp_metric`` is off (``conf/logger/tensorboard.yaml``): hparams logged
    without metrics would hide the metrics logged later.
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def log_final(
        self, loggers: Sequence[Logger], impl: str, tested: Mapping[str, Any], val_acc_best: float | None, step: int
    ) -> None:
        metrics = {HP_TEST_ACC: float(tested[TEST_ACC]), HP_TEST_LOSS: float(tested[TEST_LOSS])}
        if val_acc_best is not None and math.isfinite(val_acc_best):
            metrics[HP_VAL_ACC_BEST] = val_acc_best
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams({"impl": impl, **self.hparams}, metrics, step=step)
            else:
                logger.log_hyperparams({"impl": impl, **self.hparams})

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = epoch_summary(trainer).best
        self.log_final(trainer.loggers, pl_module.name, trainer.callback_metrics, best, trainer.global_step)
