"""A fused population: K softmax regressions trained as one LightningModule, for the fused launcher.

A softmax regression has 7,850 parameters: a lone job's time goes to fixed costs (Lightning's loop, Python,
set-up), not arithmetic. Side by side, the members' weights form one (784, K, 10) tensor: the members that
share a shuffle seed see the same minibatches (each member draws its init and its shuffle exactly as its lone
run does), so their forward pass is one (B, 784) x (784, K_shuffle * 10) product, and the S shuffle seeds' products
one batched product while every member trains and each seed has as many. The update is the chapter's SGD
with each member's own lr, momentum and weight decay; a member whose loss diverges fails alone.
``fused.jobs`` turns the population back into jobs, each with the outputs of a lone run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from fashion_mnist_softmax.data.datamodule import EpochBatchSampler, FashionMNISTDataModule
from fashion_mnist_softmax.models.classifier import with_scheduler
from fashion_mnist_softmax.models.scratch import SGD, cross_entropy, init_weights
from fashion_mnist_softmax.run.guards import DivergedLoss


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


class FusedDataModule(FashionMNISTDataModule):
    """The DataModule of a lone run, whose training batches come one per shuffle seed of the group, stacked."""

    def __init__(self, shuffle_seeds: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shuffle_seeds = shuffle_seeds

    def train_dataloader(self) -> DataLoader:
        ds = self.train_set
        ds.to(self.trainer.strategy.root_device)
        samplers = [EpochBatchSampler(len(ds), self.batch_size, True, seed) for seed in self.shuffle_seeds]
        return DataLoader(ds, batch_size=None, sampler=StackedSampler(samplers))


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


class FusedSoftmaxRegression(L.LightningModule):
    """K softmax regressions as one module: ``W`` (784, K, 10) and ``b`` (K, 10).

    Member k starts from ``seeds[k]`` and trains on the batches of ``shuffle_seeds[k]``; the members that
    share a shuffle seed are side by side, in the order of the DataModule's ``shuffle_seeds``.
    """

    def __init__(
        self,
        seeds: list[int],
        shuffle_seeds: list[int],
        lr: list[float],
        momentum: list[float],
        weight_decay: list[float],
        scheduler: dict[str, Any] | None,
        max_loss: float | list[float] = 1e6,
        check_every: int | None = None,
    ) -> None:
        super().__init__()
        k = len(seeds)
        inits = []
        for seed in seeds:  # each member's init, drawn exactly as its lone run draws it
            L.seed_everything(seed, workers=True, verbose=False)
            inits.append(init_weights(784, 10))
        self.W = torch.nn.Parameter(torch.stack(inits, dim=1).contiguous())
        self.b = torch.nn.Parameter(torch.zeros(k, 10))
        for name, values in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
        # the members a..c of each shuffle seed: one batch and one matrix product each step
        self.ranges = [(shuffle_seeds.index(s), k - shuffle_seeds[::-1].index(s)) for s in sorted(set(shuffle_seeds))]
        self.sizes = [c - a for a, c in self.ranges]
        self.even = len(set(self.sizes)) == 1  # as many members for each shuffle seed: one batched product can serve
        self.scheduler = scheduler
        self.diverged = DivergedLoss(torch.tensor(max_loss).expand(k), check_every)  # each member's own max_loss
        self.alive = torch.ones(k, dtype=torch.bool)
        self.register_buffer("alive_mask", self.alive.clone(), persistent=False)  # on the device: no copy per step
        self.failures: dict[int, str] = {}
        self.kept: dict[int, torch.Tensor] = {}  # of each block (shuffle seed) some members left: the others
        self.sums: dict[str, torch.Tensor] = {}
        self.step_losses: list[tuple[int, torch.Tensor]] = []  # (step, each member's loss) as a lone run logs them

    @staticmethod
    def logits(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, n, 10) logits of the n members of ``W`` (784, n, 10) and ``b`` (n, 10) on images x."""
        out = x.reshape(len(x), -1) @ W.reshape(784, -1) + b.reshape(-1)
        return out.view(len(x), -1, 10)

    def _add(
        self, stage: str, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, members: Any = slice(None)
    ) -> torch.Tensor:
        """Add a batch's mean losses and correct predictions of ``members`` (all, a slice or an index tensor) to the
        stage's sums; return the predicted classes."""
        predicted = logits.max(-1).indices  # argmax's, the first largest logit; over 10 classes max is faster
        correct, n = (predicted == y.unsqueeze(-1)).sum(0).reshape(-1), len(y)
        k = self.W.shape[1]
        sums = self.sums.setdefault(stage, torch.zeros(3, k, dtype=torch.float64, device=self.device))
        sums[0, members] += losses.detach().double() * n
        sums[1, members] += correct.double()
        sums[2, members] += n
        return predicted

    def epoch_metrics(self, stage: str) -> tuple[list[float], list[float]]:
        """Each member's mean loss and accuracy over the stage's epoch so far; resets them."""
        sums = self.sums.pop(stage).cpu()
        return (sums[0] / sums[2]).tolist(), (sums[1] / sums[2]).tolist()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        losses = self._batched(images, labels) if self.even and not self.kept else self._blockwise(images, labels)
        self._fail_diverged(losses, batch_idx)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:  # read at the epoch's end: no host sync per step
            self.step_losses.append((self.global_step, losses.detach()))
        return torch.where(self.alive_mask, losses, torch.zeros_like(losses)).sum()

    def _batched(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each member's loss where every member trains, as many for each shuffle seed: one batched product."""
        s = len(self.ranges)
        x, W = images.reshape(s, labels.shape[1], -1), self.W.view(784, s, -1).transpose(0, 1)
        logits = torch.baddbmm(self.b.view(s, 1, -1), x, W).view(s, labels.shape[1], -1, 10).transpose(0, 1)
        losses = cross_entropy(logits, labels.T).reshape(-1)  # logits (B, S, n, 10): S shuffle seeds of n members
        self._add("train", losses, logits, labels.T)
        return losses

    def _blockwise(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each member's loss, a product per shuffle seed, for the members still training."""
        # one split, not a slice per seed: its backward is one concatenation
        losses = []
        blocks = zip(self.W.split(self.sizes, dim=1), self.b.split(self.sizes), self.ranges, strict=True)
        for s, (W, b, (a, c)) in enumerate(blocks):
            kept = self.kept.get(s)
            if kept is None:
                logits = self.logits(images[s], W, b)
                loss = cross_entropy(logits, labels[s])
                self._add("train", loss, logits, labels[s], slice(a, c))
            else:  # members that left compute nothing: the step costs what the members still training cost
                loss = torch.zeros(c - a, device=self.device)
                if len(kept):
                    logits = self.logits(images[s], W.index_select(1, kept), b.index_select(0, kept))
                    kept_loss = cross_entropy(logits, labels[s])
                    loss = loss.index_put((kept,), kept_loss)
                    self._add("train", kept_loss, logits, labels[s], kept + a)
            losses.append(loss)
        return torch.cat(losses)

    def on_train_epoch_start(self) -> None:
        self.diverged.pending = []

    def leave(self, k: int) -> None:
        """Member k leaves the population (it diverged, or its trial was pruned): from the next step on its logits
        are not computed, its loss and gradient are zero, and its metrics are no longer reported."""
        self.alive[k] = self.alive_mask[k] = False
        for s, (a, c) in enumerate(self.ranges):
            if a <= k < c:  # the members its block still trains, on the device: no index built at each step
                self.kept[s] = self.alive[a:c].nonzero().squeeze(1).to(self.device)

    def _fail_diverged(self, losses: torch.Tensor, batch_idx: int) -> None:
        """Fails each member whose loss diverged, as the lone run's guard stops it, naming its first bad batch."""
        for k, back, loss in self.diverged.check(losses, self.trainer.is_last_batch):
            if self.alive[k]:
                self.leave(k)
                lr = self.trainer.optimizers[0].param_groups[0]["lr"] * float(self.lr[k])
                max_loss = float(self.diverged.max_loss[k])
                self.failures[k] = DivergedLoss.message(
                    max_loss, self.current_epoch + 1, batch_idx + 1 - back, loss, lr
                )

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self.logits(x, self.W, self.b)
        return self._add(stage, cross_entropy(logits, y), logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Each member's predicted classes, (B, K), for the members' confusion matrices and predictions."""
        return self._eval_step("test", batch)

    def configure_optimizers(self) -> Any:
        optimizer = FusedSGD([self.W, self.b], self.lr, self.momentum, self.weight_decay)
        return with_scheduler(optimizer, self.scheduler)
