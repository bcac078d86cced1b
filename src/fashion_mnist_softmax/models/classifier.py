"""What both softmax regressions share: the steps, one loss and one accuracy metric per stage, and the optimizer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import Metric

from fashion_mnist_softmax.data.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from fashion_mnist_softmax.models import MODEL_CLASS, class_path
from fashion_mnist_softmax.run.metrics import TRAIN_LR


def beside(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The labels with a dim of 1 for each dim of the logits they lack but the classes': (B, 1, 1) for (B, S, K, 10)."""
    return y.reshape(*y.shape, *[1] * (logits.dim() - 1 - y.dim()))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose largest logit is the true class (the chapter's ``accuracy``); each model's, for the
    logits of several models side by side: (B, K, 10) with labels (B,), or (B, S, K, 10) with labels (B, S)."""
    return (logits.argmax(dim=-1) == beside(y, logits)).float().mean(dim=0)


def with_scheduler(optimizer: torch.optim.Optimizer, scheduler: dict[str, Any] | None) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, with the configured scheduler stepped each epoch."""
    if scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": instantiate(scheduler, optimizer=optimizer), "interval": "epoch"},
    }


class EpochMean(Metric):
    """A value's mean over an epoch's images, from each batch's mean and size, elementwise: one mean for a model,
    one per model for a population of them (a fused sweep's)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch_mean: torch.Tensor, images: int) -> None:
        self.total = self.total + batch_mean.detach().double() * images  # () or (models,): the first batch decides
        self.images += images

    def compute(self) -> torch.Tensor:
        return (self.total / self.images).float()


class Classifier(L.LightningModule):
    """A classifier of 28×28 images into ten classes, minus the model (d2l's ``Classifier``).

    Subclasses define the parameters, ``forward`` (images to logits), ``loss`` (mean cross-entropy), and ``weights``
    and ``load_weights`` (W and b as the chapter writes them). The metrics accumulate on the device at every step
    and are logged once per epoch, for the callbacks and the progress bar: the run's record
    (:class:`~fashion_mnist_softmax.run.record.EpochSummary`) writes every scalar to the loggers, for a lone run as
    for each member of a fused sweep. ``optimizer`` and ``scheduler`` are configs (``conf/optim/``,
    ``conf/scheduler/``), kept as plain data so that checkpoints load weights-only; checkpoints also name the class.
    """

    @property
    def name(self) -> str:
        """What impl= calls this model: its module's name (scratch, concise)."""
        return type(self).__module__.rpartition(".")[2]

    def __init__(
        self,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        num_inputs: int = IMAGE_SIZE * IMAGE_SIZE,
        num_outputs: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run's record logs them, lone run and fused member alike
        # no per-batch input checks: each is a host sync, a NaN loss shows as a NaN mean, and the
        # labels were range-checked when the data was loaded
        self.train_loss, self.val_loss, self.test_loss = EpochMean(), EpochMean(), EpochMean()
        self.train_acc, self.val_acc, self.test_acc = EpochMean(), EpochMean(), EpochMean()
        self._logged: set[str] = set()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W (784, 10) and b (10,), as the chapter writes them."""
        raise NotImplementedError

    def load_weights(self, W: torch.Tensor, b: torch.Tensor) -> None:
        """Take the chapter's W (784, 10) and b (10,)."""
        raise NotImplementedError

    @property
    def weight_templates(self) -> torch.Tensor:
        """The ten learned 28×28-pixel class templates as a (10, 784) tensor: the columns of W."""
        return self.weights()[0].detach().T

    def update_metrics(self, stage: str, loss: torch.Tensor, accuracy: torch.Tensor, images: int) -> None:
        """Add a batch's mean loss and accuracy (each model's, in a population) to the stage's metrics."""
        getattr(self, f"{stage}_loss").update(loss, images)
        getattr(self, f"{stage}_acc").update(accuracy, images)

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, ...]:
        """The batch's logits and mean loss, added to the stage's metrics."""
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.update_metrics(stage, loss, accuracy(logits, y), len(y))
        if batch_idx == 0 or stage not in self._logged:  # an epoch resumed in its middle has no batch 0 here
            self._logged.add(stage)
            mean_loss, mean_acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "train", logger=False)
            self.log(f"{stage}/acc", mean_acc, on_step=False, on_epoch=True, prog_bar=stage == "val", logger=False)
            if stage == "train":  # this epoch's, after scheduling; the same on every rank
                self.log(TRAIN_LR, self.optimizers().param_groups[0]["lr"], logger=False, sync_dist=True)
        return logits, loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self._step("train", batch, batch_idx)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("val", batch, batch_idx)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the predicted classes, for callbacks such as the confusion matrix."""
        logits, _ = self._step("test", batch, batch_idx)
        return logits.argmax(dim=-1)

    def configure_optimizers(self) -> Any:
        return with_scheduler(instantiate(self.hparams.optimizer, params=self.parameters()), self.hparams.scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_CLASS] = class_path(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints that kept the best val/acc as a metric of the model: the run's record keeps it in its history
        checkpoint["state_dict"].pop("val_acc_best.max_value", None)
