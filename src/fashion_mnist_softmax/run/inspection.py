"""What TensorBoard shows besides the scalars: the run's figures and its HParams."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_mnist_softmax.run import figures
from fashion_mnist_softmax.run.history import VAL_METRICS, fit_validation
from fashion_mnist_softmax.run.metrics import (
    CONFUSION,
    CURVES,
    HP_TEST_ACC,
    HP_TEST_LOSS,
    HP_VAL_ACC_BEST,
    PREDICTIONS,
    SAMPLES,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    WEIGHTS,
)


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class Figures(L.Callback):
    """Draws the run's figures on rank 0, logs them to TensorBoard and saves them as ``<out_dir>/<name>.png``.

    ``samples`` (the first training images) when training starts, ``weights`` (the templates) at
    every epoch's end, ``curves`` when fitting ends (their history is part of the checkpoint), and,
    from the classes that ``test_step`` returns, ``predictions`` and ``confusion`` after testing.
    """

    curves = (TRAIN_LOSS, TRAIN_ACC, VAL_ACC)

    def __init__(self, out_dir: str | Path, num_samples: int = 10, num_predictions: int = 20) -> None:
        self.out_dir, self.num_samples, self.num_predictions = Path(out_dir), num_samples, num_predictions
        self.history: dict[str, list[float]] = {k: [] for k in ("epoch", *self.curves)}
        self._weights: Figure | None = None
        self._validated = False  # as in EpochSummary
        self._confusion: MulticlassConfusionMatrix | None = None
        self._shown: list[tuple[torch.Tensor, ...]] = []

    def _publish(self, trainer: L.Trainer, name: str, fig: Figure, step: int = 0) -> None:
        """Render once; log the image to TensorBoard and save it as a PNG."""
        image = figures.render(fig)
        for logger in _tensorboards(trainer):
            logger.experiment.add_image(name, image, step, dataformats="HWC")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.out_dir / f"{name}.png")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            dataset = trainer.train_dataloader.dataset
            images, labels = dataset[torch.arange(min(self.num_samples, len(dataset)))]
            self._publish(trainer, SAMPLES, figures.samples_figure(images, labels))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or fit_validation(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = trainer.callback_metrics
        self.history["epoch"].append(trainer.current_epoch + 1)
        for name in self.curves:
            shown = name not in VAL_METRICS or self._validated
            self.history[name].append(float(found[name]) if shown and name in found else math.nan)
        self._validated = False
        if trainer.is_global_zero:
            self._weights = figures.weights_figure(pl_module.weight_templates, fig=self._weights)
            self._publish(trainer, WEIGHTS, self._weights, step=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history["epoch"]:
            series = {name: self.history[name] for name in self.curves}
            fig = figures.curves_figure(self.history["epoch"], series)
            self._publish(trainer, CURVES, fig, step=self.history["epoch"][-1])

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_outputs).to(pl_module.device)
        self._shown = []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are the predicted classes that ``test_step`` returns."""
        self._confusion.update(outputs, batch[1])
        if (wanted := self.num_predictions - sum(len(shown[0]) for shown in self._shown)) > 0:
            self._shown.append(tuple(t[:wanted].cpu() for t in (batch[0], batch[1], outputs)))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = self._confusion.compute()  # sums the ranks' matrices, so every rank calls it
        if not trainer.is_global_zero:
            return
        self._publish(trainer, CONFUSION, figures.confusion_figure(confusion), step=trainer.global_step)
        images, labels, predicted = (torch.cat(parts) for parts in zip(*self._shown, strict=True))
        fig = figures.predictions_figure(images, labels, predicted)
        self._publish(trainer, PREDICTIONS, fig, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}


class HParams(L.Callback):
    """Logs ``hparams`` (name-value pairs) with the final metrics after testing, for TensorBoard's HParams tab.

    Lightning's placeholder ``hp_metric`` is off (``conf/logger/tensorboard.yaml``): hparams logged
    without metrics would hide the metrics logged later.
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = trainer.callback_metrics
        metrics = {HP_TEST_ACC: float(found[TEST_ACC]), HP_TEST_LOSS: float(found[TEST_LOSS])}
        best = float(pl_module.val_acc_best.max_value)
        if math.isfinite(best):
            metrics[HP_VAL_ACC_BEST] = best
        for logger in _tensorboards(trainer):
            logger.log_hyperparams({"impl": pl_module.name, **self.hparams}, metrics, step=trainer.global_step)
