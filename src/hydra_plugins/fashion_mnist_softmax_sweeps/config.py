"""The plugins' configs, dataclasses in Hydra's ConfigStore: ``hydra/launcher=fused``, ``hydra/sweeper=grid``,
``hydra/sweeper=optuna``,
its samplers ``hydra/sweeper/sampler=tpe|random`` and its pruners ``hydra/sweeper/pruner=nop|median|percentile|
hyperband|successive_halving`` (Optuna's, with their own arguments and defaults)."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class FusedLauncherConf:
    """``hydra/launcher=fused``: train the jobs of each batch the sweeper hands over as fused groups, in this
    process, or each group as a job of submitit's ``local`` or ``slurm`` executor, with its settings."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax_sweeps.fused_launcher.FusedLauncher"
    executor: str | None = None  # None: this process; local or slurm: each group a submitit job
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: int | None = None
    slurm_partition: str | None = None
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSweeperConf:
    """``hydra/sweeper=grid``: Hydra's basic sweeper (its keys), going on past jobs that failed in the project's
    way."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax_sweeps.grid_sweeper.GridSweeper"
    max_batch_size: int | None = None  # jobs launched together; None: the whole grid
    params: dict[str, str] | None = None  # the grid, e.g. optim.lr: 0.03,0.1


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
    n_warmup_steps: int = 0  # epochs
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
    min_resource: int = 1  # epochs
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
    """``hydra/sweeper=optuna``: the keys of Hydra's own Optuna sweeper."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax_sweeps.optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    sampler: Any = MISSING
    pruner: Any = MISSING  # a pruner other than nop: each job reports val/acc to its trial after every epoch
    direction: str = "minimize"  # or maximize
    storage: str | None = None  # e.g. sqlite:///logs/optuna.db, where a search resumes; None: in memory
    study_name: str | None = None
    n_trials: int = 20  # new trials, each a job
    n_jobs: int = 2  # trials asked and launched together, as one batch of jobs
    max_failure_rate: float = 0.0  # the search stops once more than this fraction of its trials failed
    params: dict[str, str] | None = None  # the search space, e.g. optim.lr: tag(log, interval(0.01, 1.0))


store = ConfigStore.instance()
store.store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="fashion_mnist_softmax")
store.store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="fashion_mnist_softmax")
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="fashion_mnist_softmax")
store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="fashion_mnist_softmax")
store.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="fashion_mnist_softmax")
for name, node in {
    "nop": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="fashion_mnist_softmax")
