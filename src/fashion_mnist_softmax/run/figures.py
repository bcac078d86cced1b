"""The run's figures (:class:`Figures`): drawn by :mod:`~fashion_mnist_softmax.run.plots`, saved as PNGs on a
thread of their own, and logged in order.

The callback does its work in methods that take plain values and the run's loggers; its Lightning hooks call them
with the trainer's values, and a fused sweep calls them for each of its members.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_mnist_softmax.data.fashion_mnist import NUM_CLASSES
from fashion_mnist_softmax.run import plots
from fashion_mnist_softmax.run.metrics import (
    CONFUSION,
    CURVES,
    PREDICTIONS,
    SAMPLES,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    WEIGHTS,
)
from fashion_mnist_softmax.run.record import epoch_summary

_saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="save-png")
_unlogged: list[tuple[Future, Callable[..., None]]] = []


def _save_png(image: np.ndarray | Future, png: Path) -> tuple[np.ndarray, bytes]:
    """The image (once drawn, if another process draws it) and its PNG, saved as ``png``."""
    image = image.result() if isinstance(image, Future) else image
    png.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="png")
    png.write_bytes(encoded.getvalue())
    return image, encoded.getvalue()


def flush_figures(keep: int = 0) -> None:
    """Log each figure handed to :meth:`Figures.publish`, in order, once its PNG is saved, until ``keep`` are left;
    raise what stopped one."""
    while len(_unlogged) > keep:
        saved, log = _unlogged[0]
        log(*saved.result())
        _unlogged.pop(0)


def discard_figures() -> None:
    """Forget the figures not yet logged: their run failed, and its loggers will not be finalized."""
    _unlogged.clear()


class Figures(L.Callback):
    """Draws the run's figures on rank 0, saves them as ``<out_dir>/<name>.png`` and logs them: TensorBoard, W&B
    and any logger with W&B's ``log_image(key, images, step)`` as images at their step, MLflow as the run's
    artifacts ``figures/<name>.png``.

    ``samples`` (the first training images) when training starts, ``weights`` (the templates) at
    every epoch's end, ``curves`` (from the epoch history) when fitting ends, and, from the classes that
    ``test_step`` returns, ``predictions`` and ``confusion`` after testing. Each figure is drawn once and
    redrawn in place; ``figs`` holds them (and the samples' rendered image), and the members of a fused sweep
    share one ``figs``, or the processes of its ``painter``, which draw while the population trains and tests.
    """

    curves = (TRAIN_LOSS, TRAIN_ACC, VAL_ACC)

    def __init__(self, out_dir: str | Path, num_samples: int = 10, num_predictions: int = 20) -> None:
        self.out_dir, self.num_samples, self.num_predictions = Path(out_dir), num_samples, num_predictions
        self.figs: dict[str, Figure] = {}
        # a fused sweep's processes that draw its members' figures, and how many figures may be on their way
        self.painter: Executor | None = None
        self.in_flight = 1
        self._confusion: MulticlassConfusionMatrix | None = None
        self._shown: list[tuple[torch.Tensor, ...]] = []

    def publish(self, loggers: Sequence[Logger], name: str, image: np.ndarray | Future, step: int = 0) -> None:
        """Save the rendered image (or the one a painter process will hand back) as a PNG, and log it to every logger
        that takes images.

        The PNG is encoded and saved on a thread of its own, whose encoding releases the GIL, while this one goes
        on; the loggers get it in this thread, in order, once at most ``in_flight`` figures are left to save, or at
        :func:`flush_figures`.
        """
        png = self.out_dir / f"{name}.png"
        saved = _saver.submit(_save_png, image, png)
        _unlogged.append((saved, functools.partial(self._log, list(loggers), name, png, step)))
        flush_figures(keep=self.in_flight)

    def _log(self, loggers: list[Logger], name: str, png: Path, step: int, image: np.ndarray, encoded: bytes) -> None:
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):  # the same PNG: add_image would encode it again
                height, width, channels = image.shape
                encoded_image = Summary.Image(
                    height=height, width=width, colorspace=channels, encoded_image_string=encoded
                )
                summary = Summary(value=[Summary.Value(tag=name, image=encoded_image)])
                # the writer's own accessor, as its add_image uses: it reopens the file that a finished fit closed
                logger.experiment._get_file_writer().add_summary(summary, step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(png), artifact_path=self.out_dir.name)
            elif hasattr(logger, "log_image"):  # W&B's, and any logger's that takes images as it does
                logger.log_image(name, [image], step=step)

    def _draw(self, loggers: Sequence[Logger], name: str, step: int, *data: Any) -> None:
        """Figure ``name`` drawn from ``data`` (arrays) on its last drawing, here or by the painter, and logged."""
        if self.painter is None:
            image = plots.drawn(name, *data, figs=self.figs)
        else:
            # pickled later, on the pool's own thread: a view of the population's weights would change meanwhile
            image = self.painter.submit(plots.drawn, name, *copy.deepcopy(data))
        self.publish(loggers, name, image, step)

    def draw_samples(self, loggers: Sequence[Logger], dataset: Any) -> None:
        if SAMPLES not in self.figs:  # the same images for every member of a fused sweep: rendered once
            images, labels = dataset[torch.arange(min(self.num_samples, len(dataset)))]
            self.figs[SAMPLES] = plots.render(plots.samples_figure(images, labels))
        self.publish(loggers, SAMPLES, self.figs[SAMPLES])

    def draw_weights(self, loggers: Sequence[Logger], templates: torch.Tensor, epoch: int) -> None:
        self._draw(loggers, WEIGHTS, epoch, templates.detach().cpu().numpy())

    def draw_curves(self, loggers: Sequence[Logger], history: list[dict[str, float]]) -> None:
        if history:
            epochs = [row["epoch"] for row in history]
            series = {name: [row.get(name, math.nan) for row in history] for name in self.curves}
            self._draw(loggers, CURVES, epochs[-1], epochs, series)

    def draw_tested(
        self,
        loggers: Sequence[Logger],
        confusion: torch.Tensor,
        shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        step: int,
    ) -> None:
        """The confusion matrix, and the first test images (images, labels, predicted classes) with their labels."""
        self._draw(loggers, CONFUSION, step, confusion.cpu().numpy())
        self._draw(loggers, PREDICTIONS, step, *(t.cpu().numpy() for t in shown))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw_samples(trainer.loggers, trainer.train_dataloader.dataset)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw_weights(trainer.loggers, pl_module.weight_templates, trainer.current_epoch + 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw_curves(trainer.loggers, epoch_summary(trainer).history)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion = MulticlassConfusionMatrix(NUM_CLASSES).to(pl_module.device)
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
        if trainer.is_global_zero:
            shown = tuple(torch.cat(parts) for parts in zip(*self._shown, strict=True))
            self.draw_tested(trainer.loggers, confusion, shown, trainer.current_epoch)  # by epoch, as the others

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        flush_figures()  # before Lightning finalizes the loggers

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            flush_figures()
