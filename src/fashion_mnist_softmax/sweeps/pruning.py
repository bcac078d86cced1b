"""Pruning in an Optuna search (``hydra/sweeper/pruner=median``, ...): each job reports its ``val/acc`` to its
trial after every validation of its fit, and stops once the study's pruner says so.

The sweeper (``hydra_plugins/fashion_mnist_softmax_sweeps/_optuna.py``) names each job's trial, and the study's
pruner, in the job's config (``trial``). A job reaches its study through the study's storage, or, where it runs
in the sweeper's own process, through the storage the sweeper registered (:data:`~.trials.STORAGES`; an in-memory
study is reached only so).
A pruned job keeps its checkpoints and logs, writes ``metrics.json`` with the epochs it trained and the status
``pruned``, skips testing, and returns :class:`~.trials.Pruned`, which the sweeper tells Optuna as a PRUNED trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import instantiate

from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.run.history import fit_validation
from fashion_mnist_softmax.run.metrics import VAL_ACC
from fashion_mnist_softmax.sweeps.trials import STORAGES


class ReportToTrial(L.Callback):
    """Reports ``val/acc`` to the job's Optuna trial after each validation of the fit, and stops a pruned job at the
    end of that epoch. Without a trial (``trial: null``, any run outside a pruned search) it does nothing."""

    def __init__(self, trial: Mapping[str, Any] | None) -> None:
        self.trial_config = dict(trial) if trial else None
        self.pruned_at: int | None = None  # the epoch after which the trial was pruned
        self._trial: Any = None

    def _open_trial(self) -> Any:
        import optuna  # only in a pruned search

        name, number, url = (self.trial_config[key] for key in ("study_name", "number", "storage"))
        storage = STORAGES.get(name) or (optuna.storages.get_storage(url) if url else None)
        if storage is None:
            raise UserError(
                f"This job cannot reach its trial: study {name} is held in memory by a sweeper in another process. "
                f"Give the search a storage, e.g. hydra.sweeper.storage=sqlite:///logs/optuna.db."
            )
        pruner = self.trial_config.get("pruner")  # Hydra instantiates it with this callback; plain where it did not
        pruner = instantiate(pruner) if isinstance(pruner, Mapping) else pruner
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
        return optuna.trial.Trial(study, trial_id)

    def should_prune(self, value: float, epoch: int) -> bool:
        """Report ``value`` at ``epoch`` to the trial; whether the study's pruner stops the trial there."""
        if self.trial_config is None:
            return False
        self._trial = self._trial or self._open_trial()
        self._trial.report(value, epoch)
        return self._trial.should_prune()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial_config is None or not fit_validation(trainer):
            return
        epoch = trainer.current_epoch + 1
        prune = trainer.is_global_zero and self.should_prune(float(trainer.callback_metrics[VAL_ACC]), epoch)
        if trainer.strategy.broadcast(prune, src=0):  # every rank stops, and skips testing, together
            self.pruned_at, trainer.should_stop = epoch, True
