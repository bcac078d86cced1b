"""The core's configs in Hydra: ``hydra/sweeper=grid``, and each class's config made from its signature
(:mod:`fashion_mnist_softmax.config.signatures`), which a YAML file extends: ``/signature@_here_: <its target>``."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from fashion_mnist_softmax.config.signatures import schema

PROVIDER = "fashion_mnist_softmax"
GROUP = "signature"


@dataclass
class GridSweeperConf:
    """``hydra/sweeper=grid``: Hydra's basic sweeper (its keys), going on past jobs that failed in the project's
    way."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax.grid_sweeper.GridSweeper"
    max_batch_size: int | None = None  # jobs launched together; None: the whole grid
    params: dict[str, str] | None = None  # the grid, e.g. optim.lr: 0.03,0.1


class SignatureConfigs(ConfigSource):
    """The config of any class or function, by its dotted path in the group ``signature``, made when Hydra loads it."""

    @staticmethod
    def scheme() -> str:
        return "signatures"

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") == GROUP

    def is_config(self, config_path: str) -> bool:
        group, _, target = config_path.removesuffix(".yaml").rpartition("/")
        return group == GROUP and "." in target

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        return []  # any target: none is listed

    def load_config(self, config_path: str) -> ConfigResult:
        target = config_path.removesuffix(".yaml").rpartition("/")[2]
        config = OmegaConf.structured(schema(target))
        return ConfigResult(provider=PROVIDER, path=self.full_path(), config=config, header={"package": None})


class SignatureConfigsSearchPath(SearchPathPlugin):
    """Puts :class:`SignatureConfigs` in every app's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(PROVIDER, f"{SignatureConfigs.scheme()}://")


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider=PROVIDER)
