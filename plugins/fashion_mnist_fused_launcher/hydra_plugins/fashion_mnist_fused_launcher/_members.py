"""A fused group's members, each with its lone run's model, loggers and callbacks, made from its config.

:class:`Members` runs each member's own callbacks (its record and ``metrics.json``'s history, its checkpoints, its
figures and HParams, its trial's report) through their Lightning hooks, with the population's trainer presenting
the member: its loggers (``trainer.loggers``), its callbacks (``trainer.callbacks``), its values
(``trainer.callback_metrics``) and its model, which holds the member's weights. What a fused group does once for all
its members, it does itself: it prints one line an epoch, takes Ctrl-C, and guards every member's loss at each step
with each member's own ``max_loss`` (the population's :class:`~fashion_mnist_softmax.run.guards.DivergedLoss`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.utils import env_override
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

from fashion_mnist_softmax.run.figures import Figures, flush_figures
from fashion_mnist_softmax.run.guards import HeldInterrupt, SaveOnInterrupt, StopOnDivergedLoss
from fashion_mnist_softmax.run.metrics import CURVES, TRAIN_LOSS, TRAIN_LR, VAL_ACC, WEIGHTS
from fashion_mnist_softmax.run.progress import EpochLines, ParameterSummary
from fashion_mnist_softmax.run.record import EpochSummary, logs_step
from fashion_mnist_softmax.run.training import instantiate_all, pruned_at

from ._population import FusedSoftmaxRegression

# what a fused group does once for all its members
THE_GROUPS_OWN = (ProgressBar, ParameterSummary, EpochLines, SaveOnInterrupt, StopOnDivergedLoss)
# the hooks a member's callbacks get, as a lone run's get them; besides, on_train_batch_end at the steps that log
# (the only steps where the members' callbacks act), and on_test_batch_end with the member's predictions
HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
    "on_test_start",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_end",
    "teardown",
)
FIT_ENDS = ("on_train_end", "on_fit_end", "teardown")  # a member its trial pruned gets them too, as a lone run does


class Member:
    """One job of a fused group: its config and its lone run's loggers, callbacks and model, made as its lone run
    makes them (the model after seeding, so that it starts from its lone run's init), in the job's environment."""

    def __init__(self, cfg: dict[str, Any], env: dict[str, str], k: int) -> None:
        self.cfg, self.k = cfg, k
        with env_override(env):  # as Hydra runs a lone job: its callbacks may read it (an Optuna trial)
            self.loggers = instantiate_all(cfg.get("logger"))
            callbacks = instantiate_all(cfg.get("callbacks"))
        L.seed_everything(cfg["seed"], workers=True, verbose=False)
        self.model = instantiate(cfg["impl"])
        self.max_loss = next(c for c in callbacks if isinstance(c, StopOnDivergedLoss)).losses.max_loss
        self.callbacks = [c for c in callbacks if not isinstance(c, THE_GROUPS_OWN)]
        for checkpoint in self.checkpoints:  # the population trains on: its members are not resumed
            checkpoint.save_weights_only = True
        self.summary = next(c for c in self.callbacks if isinstance(c, EpochSummary))
        self.figures = next((c for c in self.callbacks if isinstance(c, Figures)), None)
        self.values: dict[str, torch.Tensor] = {}  # its trainer.callback_metrics
        self.stopping = False  # a callback of its own stopped it (its trial was pruned): it leaves at the epoch's end

    @property
    def checkpoints(self) -> list[ModelCheckpoint]:
        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def pruned(self) -> bool:
        return pruned_at(self.callbacks) is not None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg["paths"]["output_dir"])


def stage_values(module: FusedSoftmaxRegression, stage: str) -> dict[str, torch.Tensor]:
    """Each member's epoch metrics of ``stage``, by the name the lone model logs them under (``train_loss`` as
    ``train/loss``): (K,) tensors."""
    # reshaped: torchmetrics hands a population of one its value as a number
    return {f"{stage}/{name}": metric.compute().reshape(-1) for name, metric in module.stage_metrics(stage).items()}


class Members(HeldInterrupt):
    """Runs each member's callbacks through the population's trainer, member by member, as a lone run's trainer
    runs its own."""

    def __init__(self, members: list[Member], figs: dict[str, Any]) -> None:
        super().__init__()
        self.members, self.figs = members, figs

    def alive(self, module: FusedSoftmaxRegression) -> list[Member]:
        return [member for member in self.members if module.alive[member.k]]

    def unfailed(self, module: FusedSoftmaxRegression) -> list[Member]:
        """The members still training and those their trial pruned, whose fit ends as a lone run's does."""
        return [member for member in self.members if member.k not in module.failures]

    @contextlib.contextmanager
    def presenting(self, trainer: L.Trainer, module: FusedSoftmaxRegression, member: Member) -> Iterator[None]:
        """The trainer and the population as the member's own run would show them to its callbacks."""
        member.model.load_weights(*module.member_weights(member.k))
        metrics, loggers, callbacks, stop = trainer.callback_metrics, trainer.loggers, trainer.callbacks, False
        metrics.clear()
        metrics.update(member.values)
        trainer.loggers, trainer.callbacks, module.presented = member.loggers, member.callbacks, member.model
        stop, trainer.should_stop = trainer.should_stop, False
        try:
            yield
        finally:
            member.stopping = member.stopping or trainer.should_stop
            trainer.loggers, trainer.callbacks, module.presented, trainer.should_stop = loggers, callbacks, None, stop

    def each(self, hook: str, trainer: L.Trainer, module: FusedSoftmaxRegression, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` of the callbacks of every member still training (of every member whose fit ends, for a hook
        of the fit's end), each member presented."""
        for member in self.unfailed(module) if hook in FIT_ENDS else self.alive(module):
            with self.presenting(trainer, module, member):
                for callback in member.callbacks:
                    getattr(callback, hook)(trainer, member.model, *args, **kwargs)

    def take(self, module: FusedSoftmaxRegression, stage: str) -> None:
        """Each member's values of the stage's epoch."""
        values = stage_values(module, stage)
        for member in self.members:
            member.values |= {name: value[member.k] for name, value in values.items()}

    def on_fit_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        for member in self.members:  # where the population trains: the members' confusion matrices count there
            member.model.to(module.device)
        self.each("on_fit_start", trainer, module)

    def on_train_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        super().on_train_start(trainer, module)  # Ctrl-C stops the group between two steps or after an epoch's end
        self.each("on_train_start", trainer, module)

    def on_train_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        factor = trainer.optimizers[0].param_groups[0]["lr"]  # the scheduler's, the same for every member
        for member in self.members:
            member.values = {TRAIN_LR: factor * module.lr[member.k]}
        self.each("on_train_epoch_start", trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx) -> None:
        if logs_step(trainer):
            for member in self.alive(module):
                with self.presenting(trainer, module, member):
                    for callback in member.callbacks:
                        loss = {"loss": outputs["losses"][member.k]}
                        callback.on_train_batch_end(trainer, member.model, loss, batch, batch_idx)
        if self._interrupted and not trainer.is_last_batch:
            raise KeyboardInterrupt

    def on_validation_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self.take(module, "val")
        self.each("on_validation_epoch_end", trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self.take(module, "train")
        self.each("on_train_epoch_end", trainer, module)
        if trained := self.alive(module):  # the members that trained this epoch, those it ends for too
            losses, accs = ([float(m.values.get(key, math.nan)) for m in trained] for key in (TRAIN_LOSS, VAL_ACC))
            print(
                f"fused epoch {trainer.current_epoch + 1}: {len(trained)} of {len(self.members)} jobs, loss "
                f"{min(losses):.4f}-{max(losses):.4f}, val acc {min(accs):.3f}-{max(accs):.3f}",
                flush=True,
            )
        for member in trained:
            if member.stopping:
                module.leave(member.k)
        if not self.alive(module):
            trainer.should_stop = True  # every member pruned or failed
        # the painters idle before the next epoch: OpenMP's threads, which spin while they wait for work, slow
        # down many times over on cores that other processes use
        flush_figures()
        if self._interrupted:
            raise KeyboardInterrupt

    def on_fit_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self.each("on_fit_end", trainer, module)
        for name in (WEIGHTS, CURVES):  # drawn for the last time: freed before the test figures are drawn
            self.figs.pop(name, None)

    def on_test_batch_end(
        self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are each member's predicted classes, (B, K)."""
        for member in self.alive(module):
            with self.presenting(trainer, module, member):
                for callback in member.callbacks:
                    callback.on_test_batch_end(trainer, member.model, outputs[:, member.k], batch, batch_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self.take(module, "test")
        self.each("on_test_epoch_end", trainer, module)

    def teardown(self, trainer: L.Trainer, module: FusedSoftmaxRegression, stage: str) -> None:
        super().teardown(trainer, module, stage)
        self.each("teardown", trainer, module, stage)

    def on_exception(self, trainer: L.Trainer, module: FusedSoftmaxRegression, exception: BaseException) -> None:
        super().teardown(trainer, module, "fit")
        self.each("on_exception", trainer, module, exception)


def _forwarding(hook: str) -> Any:
    def forward(self: Members, trainer: L.Trainer, module: FusedSoftmaxRegression, *args: Any, **kwargs: Any) -> None:
        self.each(hook, trainer, module, *args, **kwargs)

    forward.__name__ = hook
    return forward


for _hook in set(HOOKS) - set(vars(Members)):  # the hooks a member's callbacks get as they are
    setattr(Members, _hook, _forwarding(_hook))
