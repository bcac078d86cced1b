"""Callbacks that every training run uses."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from fashion_mnist_softmax import metrics as m


class EpochSummary(L.Callback):
    """Prints the chapter's per-epoch line and keeps the per-epoch history for ``metrics.json``.

    ``time_s`` is the training time of the epoch, validation excluded; it is also logged, with the
    throughput in images/s (counted on the host from the batch shapes, so nothing waits for the
    device; under DDP, the images of all ranks). The history is part of the checkpoint, so a
    resumed run still reports every epoch.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._start, self._images = 0.0, 0
        self._train_time: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images, self._train_time = time.perf_counter(), 0, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._images += batch[1].numel()

    def _stop_clock(self) -> None:
        if self._train_time is None:
            self._train_time = time.perf_counter() - self._start

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # not trainer.training: that is False while validating
            self._stop_clock()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_clock()
        pl_module.log(m.TRAIN_EPOCH_TIME, self._train_time)
        pl_module.log(m.TRAIN_THROUGHPUT, self._images * trainer.world_size / self._train_time)
        found = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        row |= {k: float(found[k]) for k in (m.TRAIN_LOSS, m.TRAIN_ACC, m.VAL_LOSS, m.VAL_ACC) if k in found}
        row[m.EPOCH_TIME] = self._train_time
        self.history.append(row)
        pl_module.print(
            f"epoch {row['epoch']}, loss {row.get(m.TRAIN_LOSS, float('nan')):.4f}, "
            f"train acc {row.get(m.TRAIN_ACC, float('nan')):.3f}, val acc {row.get(m.VAL_ACC, float('nan')):.3f}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
