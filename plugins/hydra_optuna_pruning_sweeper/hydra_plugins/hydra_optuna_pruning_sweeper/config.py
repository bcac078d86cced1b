"""The sweeper's configs: ``hydra/sweeper=optuna`` in Hydra's ConfigStore, and its samplers and pruners.

``hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|qmc|grid`` and ``hydra/sweeper/pruner=nop|median|percentile|
hyperband|successive_halving`` are Optuna's classes, each config made from its constructor's signature: every
argument with Optuna's default, ``???`` where Optuna has none. Hydra imports this module whenever it looks for
plugins, so these configs come from a config source that imports Optuna only when Hydra loads one of them.
"""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import MISSING, OmegaConf

PROVIDER = "hydra_optuna_pruning_sweeper"
GROUPS = {  # each group's Optuna module, and the class of each of its configs
    "hydra/sweeper/sampler": (
        "optuna.samplers",
        {
            "tpe": "TPESampler",
            "random": "RandomSampler",
            "cmaes": "CmaEsSampler",
            "nsgaii": "NSGAIISampler",
            "qmc": "QMCSampler",
            "grid": "GridSampler",
        },
    ),
    "hydra/sweeper/pruner": (
        "optuna.pruners",
        {
            "nop": "NopPruner",
            "median": "MedianPruner",
            "percentile": "PercentilePruner",
            "hyperband": "HyperbandPruner",
            "successive_halving": "SuccessiveHalvingPruner",
        },
    ),
}
GIVEN_BY_SWEEPER = {"search_space"}  # a grid's values, from hydra.sweeper.params
PLAIN = (type(None), bool, int, float, str)  # the defaults that a config holds; an object's default stays Optuna's


@functools.cache  # Hydra loads the sampler's and the pruner's config again for each job
def class_config(module: str, name: str) -> dict[str, Any]:
    """The config of Optuna's class ``module.name``: its ``_target_`` and its constructor's arguments. Not to be
    changed by the caller."""
    config: dict[str, Any] = {"_target_": f"{module}.{name}"}
    for parameter in inspect.signature(getattr(importlib.import_module(module), name)).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in GIVEN_BY_SWEEPER:
            continue
        if parameter.default is parameter.empty:
            config[parameter.name] = MISSING
        elif isinstance(parameter.default, PLAIN):
            config[parameter.name] = parameter.default
    return config


class OptunaClassConfigs(ConfigSource):
    """The configs of :data:`GROUPS`, made when Hydra loads one."""

    @staticmethod
    def scheme() -> str:
        return "optuna-classes"

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in GROUPS

    def is_config(self, config_path: str) -> bool:
        group, _, name = config_path.removesuffix(".yaml").rpartition("/")
        return group in GROUPS and name in GROUPS[group][1]

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if results_filter == ObjectType.GROUP or not self.is_group(config_path):
            return []
        return sorted(GROUPS[config_path.strip("/")][1])

    def load_config(self, config_path: str) -> ConfigResult:
        group, _, name = config_path.removesuffix(".yaml").rpartition("/")
        module, classes = GROUPS[group]
        config = OmegaConf.create(class_config(module, classes[name]))
        return ConfigResult(provider=self.provider, path=self.full_path(), config=config, header={"package": None})


class OptunaClassConfigsSearchPath(SearchPathPlugin):
    """Puts :class:`OptunaClassConfigs` in every app's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(PROVIDER, f"{OptunaClassConfigs.scheme()}://")


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=optuna``: the keys of Hydra's own Optuna sweeper, and a pruner."""

    _target_: str = "hydra_plugins.hydra_optuna_pruning_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper makes its sampler, with the values a grid takes and a resumed seed
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    sampler: Any = MISSING
    pruner: Any = MISSING  # a pruner other than nop: a job reports to its trial (trial()) and stops when pruned
    direction: Any = "minimize"  # or maximize, or a list of them: one for each number that the task returns
    storage: str | None = None  # e.g. sqlite:///optuna.db, where a search resumes; None: in memory
    study_name: str | None = None
    n_trials: int = 20  # new trials, each a job
    n_jobs: int = 2  # trials asked and launched together, as one batch of jobs
    max_failure_rate: float = 0.0  # the search ends, in its first failure, once more of a batch failed
    params: dict[str, str] | None = None  # the search space, e.g. x: tag(log, interval(0.01, 1.0))
    custom_search_space: str | None = None  # a function(cfg, trial) that suggests more parameters to each trial


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=PROVIDER)
