"""What both softmax regressions share: the steps, one set of torchmetrics per stage, and the optimizer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fashion_mnist_softmax.data.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from fashion_mnist_softmax.models import MODEL_CLASS, class_path
from fashion_mnist_softmax.run.metrics import TRAIN_LOSS_STEP, VAL_ACC_BEST


def with_scheduler(optimizer: torch.optim.Optimizer, scheduler: dict[str, Any] | None) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, with the configured scheduler stepped each epoch."""
    if scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": instantiate(scheduler, optimizer=optimizer), "interval": "epoch"},
    }


class Classifier(L.LightningModule):
    """A classifier of 28×28 images into ten classes, minus the model (d2l's ``Classifier``).

    Subclasses define the parameters, ``forward`` (images to logits), ``loss`` (mean cross-entropy)
    and ``weight_templates``. The metrics accumulate on the device at every step and are handed to
    ``self.log`` once per epoch, at its first batch: a ``self.log`` call costs more than a step here.
    ``optimizer`` and ``scheduler`` are configs (``conf/optim/``, ``conf/scheduler/``), kept as plain
    data so that checkpoints load weights-only; checkpoints also name the class.
    """

    name = ""  # what impl= calls the subclass: "scratch" or "concise"

    def __init__(
        self,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        num_inputs: int = IMAGE_SIZE * IMAGE_SIZE,
        num_outputs: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # no per-batch input checks: each is a host sync, a NaN loss shows as a NaN mean, and the
        # labels were range-checked when the data was loaded
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_outputs, average="micro", validate_args=False) for _ in range(3)
        )
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self._logged: set[str] = set()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight_templates(self) -> torch.Tensor:
        """The ten learned 28×28-pixel class templates as a (10, 784) tensor."""
        raise NotImplementedError

    def load_weights(self, W: torch.Tensor, b: torch.Tensor) -> None:
        """Take the chapter's W (784, 10) and b (10,): a fused sweep's member saved as this impl."""
        raise NotImplementedError

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, ...]:
        """The batch's logits and mean loss, added to the stage's metrics."""
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        mean_loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        # the batch's mean once per image: a short last batch weighs what it holds. Not weight=len(y), which
        # torchmetrics drops when nan_strategy="disable" (Lightning-AI/torchmetrics#3434)
        mean_loss.update(loss.detach().expand(len(y)))
        accuracy.update(logits, y)
        if batch_idx == 0 or stage not in self._logged:  # an epoch resumed in its middle has no batch 0 here
            self._logged.add(stage)
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "train")
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return logits, loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self._step("train", batch, batch_idx)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:  # the steps whose values Lightning writes out
            self.log(TRAIN_LOSS_STEP, loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("val", batch, batch_idx)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the predicted classes, for callbacks such as the confusion matrix."""
        logits, _ = self._step("test", batch, batch_idx)
        return logits.argmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log(VAL_ACC_BEST, self.val_acc_best.compute(), sync_dist=True)  # the same on every rank

    def configure_optimizers(self) -> Any:
        return with_scheduler(instantiate(self.hparams.optimizer, params=self.parameters()), self.hparams.scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_CLASS] = class_path(self)
