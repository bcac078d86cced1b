"""``hydra/sweeper=optuna``: an Optuna search on Optuna's ask-and-tell API, for any Hydra app.

It takes the keys of Hydra's own Optuna sweeper (``params`` in its ``choice``, ``range``, ``interval``, ``int(...)``
and ``tag(log, ...)`` syntax, ``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``, ``n_jobs``,
``max_failure_rate``, ``custom_search_space``) and runs on current Optuna. With a ``pruner``, a job reports to its
trial (:func:`~hydra_plugins.hydra_optuna_pruning_sweeper.trial`) and raises ``optuna.TrialPruned`` when the
pruner stops it; the trial ends PRUNED.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        custom_search_space: str | None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params, self.custom_search_space = params, custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> None:
        from . import _impl  # Optuna, only when a search runs

        _impl.sweep(self, arguments)
