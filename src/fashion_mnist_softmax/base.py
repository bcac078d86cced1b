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
    epoch's end) and logging. Each training step takes a chunk of minibatches from the DataModule
    and runs one SGD step on each.

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
        self.automatic_optimization = False  # training_step steps the optimizer itself, once per minibatch

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    @property
    def weight_templates(self) -> torch.Tensor:
        """The ten learned 28×28-pixel class templates as a (10, 784) tensor."""
        raise NotImplementedError

    def _record(self, stage: str, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, batch_idx: int) -> None:
        """Update the stage's metrics on the device, with no host sync.

        ``losses`` holds the mean loss of each minibatch of equal size in ``logits``. The metric
        objects accumulate every batch themselves; ``self.log`` only hands them to Lightning, which
        computes, syncs and resets them at the epoch's end. So they are handed over once per epoch:
        each ``self.log`` call costs more than a minibatch's arithmetic.
        """
        mean_loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        mean_loss.update(losses, weight=y.numel() / losses.numel())
        acc.update(logits, y)
        if batch_idx == 0:
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "train")
            self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def training_step(self, chunk: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One SGD step on each minibatch of the chunk, in order; returns their losses.

        Lightning's fixed cost per training step (hooks, callbacks, logging) is several times the
        arithmetic of one minibatch here, so one step runs ``data.batches_per_step`` of them, with
        manual optimization. The minibatches, the updates and ``global_step`` (which counts
        optimizer steps) are exactly those of one minibatch per step.
        """
        images, labels = chunk
        optimizer = self.optimizers()
        losses, logits = [], []
        for x, y in zip(images, labels, strict=True):
            out = self(x)
            loss = self.loss(out, y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            losses.append(loss.detach())
            logits.append(out.detach())
        losses = torch.stack(losses)
        self._record("train", losses, torch.cat(logits), labels.flatten(), batch_idx)
        every = self.trainer.log_every_n_steps
        if every and (self.trainer.fit_loop.total_batch_idx + 1) % every == 0:  # the steps Lightning writes out
            self.log(m.TRAIN_LOSS_STEP, losses.mean(), on_step=True, on_epoch=False)
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.trainer.is_last_batch:
            scheduler.step()
        return losses

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self._record(stage, self.loss(logits, y), logits, y, batch_idx)
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the predicted classes, for callbacks such as the confusion matrix."""
        return self._eval_step(batch, batch_idx, "test").argmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log(m.VAL_ACC_BEST, self.val_acc_best.compute())

    def configure_optimizers(self) -> Any:
        """The optimizer, and the scheduler that ``training_step`` steps at each epoch's last batch."""
        optimizer = self.make_optimizer()
        if self.hparams.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.hparams.scheduler, optimizer=optimizer)}
