"""The sweeper's configs in Hydra's ConfigStore: ``hydra/sweeper=optuna``, its samplers
``hydra/sweeper/sampler=tpe|random`` and its pruners ``hydra/sweeper/pruner=nop|median|percentile|hyperband|
successive_halving`` (Optuna's, with their own arguments and defaults)."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool = False


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class NopPrunerConf:
    """No pruning: every trial trains all its epochs."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=optuna``: the keys of Hydra's own Optuna sweeper, and a pruner."""

    _target_: str = "hydra_plugins.hydra_optuna_pruning_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    sampler: Any = MISSING
    pruner: Any = MISSING  # a pruner other than nop: a job reports to its trial (trial()) and stops when pruned
    direction: str = "minimize"  # or maximize
    storage: str | None = None  # e.g. sqlite:///optuna.db, where a search resumes; None: in memory
    study_name: str | None = None
    n_trials: int = 20  # new trials, each a job
    n_jobs: int = 2  # trials asked and launched together, as one batch of jobs
    max_failure_rate: float = 0.0  # the search stops once more than this fraction of its trials failed
    params: dict[str, str] | None = None  # the search space, e.g. x: tag(log, interval(0.01, 1.0))


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="hydra_optuna_pruning_sweeper")
for group, nodes in {
    "sampler": {"tpe": TPESamplerConf, "random": RandomSamplerConf},
    "pruner": {
        "nop": NopPrunerConf,
        "median": MedianPrunerConf,
        "percentile": PercentilePrunerConf,
        "hyperband": HyperbandPrunerConf,
        "successive_halving": SuccessiveHalvingPrunerConf,
    },
}.items():
    for name, node in nodes.items():
        store.store(group=f"hydra/sweeper/{group}", name=name, node=node, provider="hydra_optuna_pruning_sweeper")
