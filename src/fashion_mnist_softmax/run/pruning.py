"""A search's job and its Optuna trial: ``val/acc`` reported after each validation, a stop when the trial is pruned.

The trial comes from the search's sweeper (``conf/hparams_search/optuna.yaml`` gives it to :class:`ReportToTrial`).
A pruned job keeps its checkpoints and logs, writes ``metrics.json`` with the epochs it trained and the status
``pruned``, skips testing, and raises ``optuna.TrialPruned`` (:func:`objective`), which its sweeper tells Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from fashion_mnist_softmax.run.metrics import PRUNED, STATUS, VAL_ACC, VAL_ACC_BEST
from fashion_mnist_softmax.run.record import fit_validation


def progress(epoch: int, max_epochs: int | None) -> int:
    """The step a trial's report is made at: the percent of its training done after ``epoch`` (the epoch itself
    where training has no epoch limit). Trials of 10 and 20 epochs are compared at the same point of their schedule
    (a cosine's learning rate at epoch 2 of 20 is that of epoch 1 of 10), and a pruner's ``n_warmup_steps`` is a
    percent of training."""
    return round(100 * epoch / max_epochs) if max_epochs and max_epochs > 0 else epoch


class ReportToTrial(L.Callback):
    """Reports ``val/acc`` to the job's Optuna trial after each validation of the fit, at the percent of its training
    done (:func:`progress`), and stops a pruned job at the end of that epoch. Without a trial (a run outside a
    search) it does nothing."""

    def __init__(self, trial: Any = None) -> None:
        self.trial = trial  # an optuna.trial.Trial
        self.pruned_at: int | None = None  # the epoch after which the trial was pruned

    def should_prune(self, value: float, step: int) -> bool:
        """Report ``value`` at ``step`` to the trial; whether the study's pruner stops the trial there."""
        if self.trial is None:
            return False
        self.trial.report(value, step)
        return self.trial.should_prune()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None or not fit_validation(trainer):
            return
        epoch = trainer.current_epoch + 1
        step = progress(epoch, trainer.max_epochs)
        prune = trainer.is_global_zero and self.should_prune(float(trainer.callback_metrics[VAL_ACC]), step)
        if trainer.strategy.broadcast(prune, src=0):  # every rank stops, and skips testing, together
            self.pruned_at, trainer.should_stop = epoch, True


def objective(metrics: Mapping[str, Any]) -> float:
    """A job's return value for its sweeper: ``val/acc_best``; a pruned job raises ``optuna.TrialPruned``."""
    if metrics.get(STATUS) == PRUNED:
        import optuna  # a search's job: Optuna is there

        raise optuna.TrialPruned(f"pruned after epoch {len(metrics['history'])}")
    return metrics[VAL_ACC_BEST]
