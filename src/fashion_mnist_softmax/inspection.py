"""Callbacks that make a run tell its story in TensorBoard: figures and HParams.

They are listed in ``conf/callbacks/inspection.yaml``. Figures go to every ``TensorBoardLogger``
of the trainer and, as PNGs, to a folder, so they are there for people who never open TensorBoard.
"""

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

from fashion_mnist_softmax import figures
from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.callbacks import EpochSummary


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _first_items(dataset: torch.utils.data.Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (image, label) pairs of a map-style data set, stacked."""
    images, labels = zip(*(dataset[i] for i in range(min(n, len(dataset)))), strict=True)
    return torch.stack(images), torch.stack([torch.as_tensor(y) for y in labels])


class Figures(L.Callback):
    """Draws the run's figures (:mod:`fashion_mnist_softmax.figures`) on rank 0.

    - at the start of training: the first training images with their labels (``samples``);
    - at the end of every epoch: the weight templates, with the epoch as the step (``weights``);
    - at the end of fitting: the per-epoch loss and accuracies (``curves``);
    - at the end of testing: the first test images titled "true / predicted" (``predictions``)
      and the confusion matrix of the whole test set (``confusion``).

    Each is logged as a TensorBoard image and saved as ``<out_dir>/<name>.png`` (the weights
    PNG shows the latest epoch). The curves come from :class:`EpochSummary`'s history, which a
    resumed run restores from its checkpoint.

    Args:
        out_dir: the folder for the PNGs, usually ``<run_dir>/figures``.
        num_samples: how many training images ``samples`` shows.
        num_predictions: how many test images ``predictions`` shows, ten to a row.
    """

    curves = (m.TRAIN_LOSS, m.TRAIN_ACC, m.VAL_ACC)

    def __init__(self, out_dir: str | Path, num_samples: int = 10, num_predictions: int = 20) -> None:
        self.out_dir, self.num_samples, self.num_predictions = Path(out_dir), num_samples, num_predictions
        self._confusion: MulticlassConfusionMatrix | None = None
        self._weights: Figure | None = None

    def _publish(self, trainer: L.Trainer, name: str, fig: Figure, step: int = 0) -> None:
        """Render once; log the image to TensorBoard and save it as a PNG."""
        image = figures.render(fig)
        for logger in _tensorboards(trainer):
            logger.experiment.add_image(name, image, step, dataformats="HWC")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.out_dir / f"{name}.png")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            images, labels = _first_items(trainer.train_dataloader.dataset, self.num_samples)
            self._publish(trainer, m.SAMPLES, figures.samples_figure(images, labels))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._weights = figures.weights_figure(pl_module.weight_templates, fig=self._weights)
        self._publish(trainer, m.WEIGHTS, self._weights, step=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = next(c.history for c in trainer.callbacks if isinstance(c, EpochSummary))
        if trainer.is_global_zero and history:
            series = {k: [row.get(k, math.nan) for row in history] for k in self.curves}
            fig = figures.curves_figure([row["epoch"] for row in history], series)
            self._publish(trainer, m.CURVES, fig, step=history[-1]["epoch"])

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_outputs).to(pl_module.device)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are the predicted classes that ``test_step`` returns."""
        self._confusion.update(outputs, batch[1])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = self._confusion.compute()  # sums the ranks' matrices, so every rank calls it
        if not trainer.is_global_zero:
            return
        self._publish(trainer, m.CONFUSION, figures.confusion_figure(confusion), step=trainer.global_step)
        images, labels = _first_items(trainer.test_dataloaders.dataset, self.num_predictions)
        with torch.no_grad():
            predicted = pl_module(images.to(pl_module.device)).argmax(dim=1).cpu()
        fig = figures.predictions_figure(images, labels, predicted)
        self._publish(trainer, m.PREDICTIONS, fig, step=trainer.global_step)


class HParams(L.Callback):
    """Logs the hyperparameters with the final metrics after testing, for TensorBoard's HParams tab.

    Lightning's placeholder ``hp_metric`` is off (``default_hp_metric: false``): hparams logged
    once without metrics would hide the metrics logged later. ``impl`` comes from the model.

    Args:
        hparams: flat name-value pairs, e.g. ``lr: ${optim.lr}`` (``conf/callbacks/inspection.yaml``).
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = trainer.callback_metrics
        metrics = {m.HP_TEST_ACC: float(found[m.TEST_ACC]), m.HP_TEST_LOSS: float(found[m.TEST_LOSS])}
        best = float(pl_module.val_acc_best.max_value)
        if math.isfinite(best):
            metrics[m.HP_VAL_ACC_BEST] = best
        for logger in _tensorboards(trainer):
            logger.log_hyperparams({"impl": pl_module.name, **self.hparams}, metrics, step=trainer.global_step)
