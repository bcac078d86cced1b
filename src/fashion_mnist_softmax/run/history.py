"""The run's epoch history: the chapter's per-epoch line, and the rows of ``metrics.json``."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from fashion_mnist_softmax.run.metrics import (
    COMPLETED,
    EPOCH_TIME,
    STATUS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_EPOCH_TIME,
    TRAIN_LOSS,
    TRAIN_THROUGHPUT,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_LOSS,
)

TRAIN_METRICS, VAL_METRICS = (TRAIN_LOSS, TRAIN_ACC), (VAL_LOSS, VAL_ACC)


def fit_validation(trainer: L.Trainer) -> bool:
    """Whether the trainer is validating for its fit, not for a sanity check."""
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking


class EpochSummary(L.Callback):
    """Prints the chapter's per-epoch line and keeps the per-epoch history for ``metrics.json``.

    ``time_s`` is the epoch's training time, validation excluded; it is logged with the throughput,
    counted from the batch shapes so that nothing waits for the device. The history, and the time so
    far of an epoch stopped in its middle, are part of the checkpoint: a resumed run reports every epoch.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._elapsed, self._images = 0.0, 0  # of the current epoch, before this process's first step of it
        self._start: float | None = None  # of this process's part of the epoch
        self._train_time: float | None = None  # set when the epoch's training ends
        self._validated = False  # this epoch: a validation's metrics stay in callback_metrics until the next one

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._images, self._start, self._train_time = 0.0, 0, time.perf_counter(), None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:  # resumed in the middle of an epoch: Lightning does not start the epoch again
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])

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
        for name, value in self.timing(self._train_time, self._images * trainer.world_size).items():
            pl_module.log(name, value, sync_dist=True)  # each rank's own clock: their mean
        found, names = trainer.callback_metrics, TRAIN_METRICS + (VAL_METRICS if self._validated else ())
        self._validated = False
        row = self.add(trainer.current_epoch + 1, {k: float(found[k]) for k in names if k in found}, self._train_time)
        pl_module.print(epoch_line(row))

    def add(self, epoch: int, metrics: dict[str, float], seconds: float) -> dict[str, float]:
        """Add the row of an epoch: its number, its train and (if it validated) val metrics, its training time."""
        row = {"epoch": epoch} | {k: metrics[k] for k in (*TRAIN_METRICS, *VAL_METRICS) if k in metrics}
        self.history.append(row | {EPOCH_TIME: seconds})
        return self.history[-1]

    @staticmethod
    def timing(seconds: float, images: int) -> dict[str, float]:
        """The logged scalars of an epoch's training time."""
        return {TRAIN_EPOCH_TIME: seconds, TRAIN_THROUGHPUT: images / seconds}

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
    tested: dict[str, float],
    test_ckpt: str | None,
    hparams: dict,
    history: list[dict[str, float]],
    status: str = COMPLETED,
) -> dict[str, Any]:
    """A run's ``metrics.json``: its status, its test metrics (none for a pruned job, which is not tested), its best
    validation accuracy, its config and its history."""
    val_accs = [row[VAL_ACC] for row in history if VAL_ACC in row]
    return {
        "impl": impl,
        "seed": seed,
        STATUS: status,
        TEST_ACC: tested.get(TEST_ACC),
        TEST_LOSS: tested.get(TEST_LOSS),
        VAL_ACC_BEST: max(val_accs) if val_accs else None,
        "test_ckpt": None if test_ckpt is None else str(test_ckpt),
        "hparams": hparams,
        "history": history,
    }
