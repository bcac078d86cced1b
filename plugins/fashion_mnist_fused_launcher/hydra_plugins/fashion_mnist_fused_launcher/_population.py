"""A fused population: K softmax regressions trained as one LightningModule.

A softmax regression has 7,850 parameters: a lone job's time goes to fixed costs (Lightning's loop, Python,
set-up), not arithmetic. Side by side, the members' weights form one (784, K, 10) tensor: the members that
share a shuffle seed see the same minibatches (each member starts from its lone model's init, and draws its
shuffle exactly as its lone run does), so their forward pass is one (B, 784) x (784, K_shuffle * 10) product, and
the S shuffle seeds' products one batched product while every member trains and each seed has as many. The update
is the chapter's SGD with each member's own lr, momentum and weight decay; a member whose loss diverges fails alone.
The population computes each member's values; each member's outputs are its own callbacks' (``_members.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from fashion_mnist_softmax.checkpoints import DATA_STATE
from fashion_mnist_softmax.data.datamodule import EpochBatchSampler, FashionMNISTDataModule
from fashion_mnist_softmax.data.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from fashion_mnist_softmax.models.classifier import Classifier, EpochMean, accuracy, with_scheduler
from fashion_mnist_softmax.models.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.models.scratch import SGD, ScratchSoftmaxRegression, cross_entropy
from fashion_mnist_softmax.run.guards import DivergedLoss

# the models whose training the population takes over: a softmax regression, W (784, 10) and b (10,), trained with
# SGD; a job of any other model trains alone
STANDS_IN_FOR = (ScratchSoftmaxRegression, ConciseSoftmaxRegression)
PIXELS = IMAGE_SIZE * IMAGE_SIZE


class StackedSampler:
    """One (S, B) index tensor per step: batch ``i`` of each shuffle seed's own epoch order."""

    def __init__(self, samplers: list[EpochBatchSampler]) -> None:
        self.samplers = samplers

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from (torch.stack(batches) for batches in zip(*self.samplers, strict=True))

    def __len__(self) -> int:
        return len(self.samplers[0])

    def state_dict(self) -> dict[str, int]:
        return self.samplers[0].state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        for sampler in self.samplers:
            sampler.load_state_dict(state)


class FusedDataModule(FashionMNISTDataModule):
    """The DataModule of a lone run, whose training batches come one per shuffle seed of the group, stacked."""

    def __init__(self, shuffle_seeds: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shuffle_seeds = shuffle_seeds

    def batch_sampler(self, n: int, shuffle: bool, rank: int, world_size: int) -> Any:
        if not shuffle:
            return super().batch_sampler(n, shuffle, rank, world_size)
        return StackedSampler([EpochBatchSampler(n, self.batch_size, True, seed) for seed in self.shuffle_seeds])


class FusedSGD(SGD):
    """The chapter's SGD, each member with its own lr, momentum and weight decay: tensors that broadcast over the
    members, or one number where every member has the same.

    Each parameter's last two dims are (member, class), as W's (784, K, 10) and b's (K, 10); a member's option is
    repeated over its classes, (K, 10), so that the update runs over whole rows of 10·K values, not runs of 10.
    ``lr`` of the param group is a factor, 1 at the start, that a learning-rate scheduler changes for every
    member alike; a member's step is ``lr * member_lr``.
    """

    def __init__(
        self, params: list[torch.nn.Parameter], lr: torch.Tensor, momentum: torch.Tensor, weight_decay: torch.Tensor
    ) -> None:
        super().__init__(params, lr=1.0)

        def each(values: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor | float:
            # one number where every member has the same: momentum or weight decay 0 then costs nothing
            if bool((values == values[0]).all()):
                return float(values[0])
            return values.view(-1, 1).expand(p.shape[-2:]).contiguous()

        self.member = {p: (each(lr, p), each(momentum, p), each(weight_decay, p)) for p in params}

    def hyperparameters(self, group: dict[str, Any], p: torch.nn.Parameter) -> tuple[Any, Any, Any]:
        lr, momentum, weight_decay = self.member[p]
        return group["lr"] * lr, momentum, weight_decay


class FusedSoftmaxRegression(Classifier):
    """K softmax regressions as one module: ``W`` (784, K, 10) and ``b`` (K, 10), from the members' initial weights
    (``inits``, W and b as the chapter writes them) and with their optimizers' lr, momentum and weight decay.

    Member k trains on the batches of ``shuffle_seeds[k]``; the members that share a shuffle seed are side by side,
    in the order of the DataModule's ``shuffle_seeds``. Its metrics hold each member's mean loss and accuracy; while
    a member is presented to its callbacks (``presented``), a checkpoint the trainer saves is that member's own.
    """

    name = "fused"

    def __init__(
        self,
        inits: list[tuple[torch.Tensor, torch.Tensor]],
        optimizers: list[dict[str, Any]],
        shuffle_seeds: list[int],
        scheduler: dict[str, Any] | None,
        max_loss: list[float],
        check_every: int | None = None,
    ) -> None:
        super().__init__(optimizer={}, scheduler=scheduler)
        k = len(inits)
        self.W = torch.nn.Parameter(torch.stack([W for W, _ in inits], dim=1).contiguous())
        self.b = torch.nn.Parameter(torch.stack([b for _, b in inits]).contiguous())
        options = [{"momentum": 0.0, "weight_decay": 0.0} | optimizer for optimizer in optimizers]
        for name in ("lr", "momentum", "weight_decay"):
            self.register_buffer(name, torch.tensor([o[name] for o in options], dtype=torch.float32))
        # the members a..c of each shuffle seed: one batch and one matrix product each step
        self.ranges = [(shuffle_seeds.index(s), k - shuffle_seeds[::-1].index(s)) for s in sorted(set(shuffle_seeds))]
        self.sizes = [c - a for a, c in self.ranges]
        self.even = len(set(self.sizes)) == 1  # as many members for each shuffle seed: one batched product can serve
        self.diverged = DivergedLoss(torch.tensor(max_loss), check_every)  # each member's own max_loss
        self.alive = torch.ones(k, dtype=torch.bool)
        self.register_buffer("alive_mask", self.alive.clone(), persistent=False)  # on the device: no copy per step
        self.failures: dict[int, str] = {}
        self.kept: dict[int, torch.Tensor] = {}  # of each block (shuffle seed) some members left: the others
        self.lr_factor = 1.0  # the scheduler's, this epoch
        self.presented: Classifier | None = None

    @staticmethod
    def logits(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, n, 10) logits of the n members of ``W`` (784, n, 10) and ``b`` (n, 10) on images x."""
        out = x.reshape(len(x), -1) @ W.reshape(PIXELS, -1) + b.reshape(-1)
        return out.view(len(x), -1, NUM_CLASSES)

    def member_weights(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Member k's W (784, 10) and b (10,)."""
        return self.W.detach()[:, k], self.b.detach()[k]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The members' summed loss, to minimize, and each member's loss."""
        images, labels = batch
        batched = self.even and not self.kept
        losses, accuracies = self._batched(images, labels) if batched else self._blockwise(images, labels)
        self.update_metrics("train", losses, accuracies, labels.shape[1])
        self._fail_diverged(losses, batch_idx)
        return {"loss": torch.where(self.alive_mask, losses, torch.zeros_like(losses)).sum(), "losses": losses.detach()}

    def _batched(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's loss and accuracy where every member trains, as many for each shuffle seed: one batched
        product."""
        s = len(self.ranges)
        x, W = images.reshape(s, labels.shape[1], -1), self.W.view(PIXELS, s, -1).transpose(0, 1)
        logits = torch.baddbmm(self.b.view(s, 1, -1), x, W).view(s, labels.shape[1], -1, NUM_CLASSES).transpose(0, 1)
        # logits (B, S, n, 10): S shuffle seeds of n members
        return cross_entropy(logits, labels.T).reshape(-1), accuracy(logits, labels.T).reshape(-1)

    def _blockwise(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's loss and accuracy, a product per shuffle seed, for the members still training; 0 for the
        members that left, which compute nothing."""
        accuracies, losses = torch.zeros(self.W.shape[1], device=self.device), []
        # one split, not a slice per seed: its backward is one concatenation
        blocks = zip(self.W.split(self.sizes, dim=1), self.b.split(self.sizes), self.ranges, strict=True)
        for s, (W, b, (a, c)) in enumerate(blocks):
            kept = self.kept.get(s)
            if kept is None:
                logits = self.logits(images[s], W, b)
                losses.append(cross_entropy(logits, labels[s]))
                accuracies[a:c] = accuracy(logits, labels[s])
                continue
            loss = torch.zeros(c - a, device=self.device)
            if len(kept):
                logits = self.logits(images[s], W.index_select(1, kept), b.index_select(0, kept))
                loss = loss.index_put((kept,), cross_entropy(logits, labels[s]))
                accuracies[a + kept] = accuracy(logits, labels[s])
            losses.append(loss)
        return torch.cat(losses), accuracies

    def stage_metrics(self, stage: str) -> dict[str, EpochMean]:
        """The metrics of ``stage`` (train, val or test) by their names: ``loss`` for ``train_loss``."""
        prefix = f"{stage}_"
        return {
            name.removeprefix(prefix): metric
            for name, metric in self.named_children()
            if isinstance(metric, EpochMean) and name.startswith(prefix)
        }

    def _reset(self, stage: str) -> None:
        """The stage's metrics emptied for its new epoch (a lone model's are reset by Lightning, which logs them)."""
        for metric in self.stage_metrics(stage).values():
            metric.reset()

    def on_train_epoch_start(self) -> None:
        self._reset("train")
        self.diverged.pending = []
        self.lr_factor = self.optimizers().param_groups[0]["lr"]

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def leave(self, k: int) -> None:
        """Member k leaves the population (it diverged, or its trial was pruned): from the next step on its logits
        are not computed, its loss and gradient are zero."""
        self.alive[k] = self.alive_mask[k] = False
        for s, (a, c) in enumerate(self.ranges):
            if a <= k < c:  # the members its block still trains, on the device: no index built at each step
                self.kept[s] = self.alive[a:c].nonzero().squeeze(1).to(self.device)

    def _fail_diverged(self, losses: torch.Tensor, batch_idx: int) -> None:
        """Fails each member whose loss diverged, as the lone run's guard stops it, naming its first bad batch."""
        for k, back, loss in self.diverged.check(losses, self.trainer.is_last_batch):
            if self.alive[k]:
                self.leave(k)
                max_loss, lr = float(self.diverged.max_loss[k]), self.lr_factor * float(self.lr[k])
                self.failures[k] = DivergedLoss.message(
                    max_loss, self.current_epoch + 1, batch_idx + 1 - back, loss, lr
                )
                if not self.alive.any():  # no member left to train: the group stops after this step
                    self.trainer.should_stop = True

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self.logits(x, self.W, self.b)
        self.update_metrics(stage, cross_entropy(logits, y), accuracy(logits, y), len(y))
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Each member's predicted classes, (B, K), for the members' confusion matrices and predictions."""
        return self._eval_step("test", batch).argmax(dim=-1)

    def configure_optimizers(self) -> Any:
        optimizer = FusedSGD([self.W, self.b], self.lr, self.momentum, self.weight_decay)
        return with_scheduler(optimizer, self.hparams.scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The presented member's checkpoint, as its lone run saves it: its model's weights, hyperparameters and
        class, the DataModule's state under the lone DataModule's name; Lightning's own keys as they are."""
        member = self.presented
        checkpoint.update(state_dict=member.state_dict(), hyper_parameters=dict(member.hparams))
        checkpoint[DATA_STATE] = checkpoint.pop(type(self.trainer.datamodule).__qualname__)
        member.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        raise NotImplementedError("a fused population is not resumed: its members' checkpoints hold weights only")
