"""The shared LightningModule: steps, torchmetrics and logging for both implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.data import IMAGE_SIZE, NUM_CLASSES

STAGES = ("train", "val", "test")


def _plain(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Hydra hands over DictConfigs; checkpoints keep plain dicts so ``weights_only`` loading works."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return None if cfg is None else dict(cfg)


class SoftmaxRegression(L.LightningModule):
    """Softmax regression, minus the math.

    Subclasses define the parameters, ``forward`` (images to logits), ``loss`` (mean cross-entropy
    of logits and labels), ``make_optimizer`` and ``weight_templates``. This class owns the steps,
    one set of metrics per stage (which Lightning computes, syncs across ranks and resets at each
    epoch's end) and logging.

    Args:
        optimizer: an optimizer config with ``_target_`` (``conf/optim/``), e.g. ``torch.optim.SGD``.
        scheduler: a learning-rate scheduler config with ``_target_`` (``conf/scheduler/``), or None.
    """

    def __init__(
        self,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        num_inputs: int = IMAGE_SIZE * IMAGE_SIZE,
        num_outputs: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "num_inputs": num_inputs,
                "num_outputs": num_outputs,
            }
        )
        # Both skip their per-batch input checks, each a host sync: a NaN loss shows as a NaN mean,
        # and the labels were range-checked when the data was loaded.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in STAGES)
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_outputs, average="micro", validate_args=False) for _ in STAGES
        )
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    @property
    def weight_templates(self) -> torch.Tensor:
        """The ten learned 28×28-pixel class templates as a (10, 784) tensor."""
        raise NotImplementedError

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: logits, loss, and the stage's metrics updated on the device, with no host sync.

        The metric objects accumulate every batch themselves; ``self.log`` only hands them to
        Lightning, which computes, syncs and resets them at the epoch's end. So they are handed
        over once per epoch: each ``self.log`` call costs more than the whole step's arithmetic.
        """
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        mean_loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        mean_loss.update(loss.detach(), weight=y.numel())
        acc.update(logits.detach(), y)
        if batch_idx == 0:
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "train")
            self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, batch_idx, "train")
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # the steps Lightning writes out
            self.log(m.TRAIN_LOSS_STEP, loss.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the predicted classes, for callbacks such as the confusion matrix."""
        _, logits = self._step(batch, batch_idx, "test")
        return logits.argmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log(m.VAL_ACC_BEST, self.val_acc_best.compute())

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer()
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
