"""The core's sweeper config in Hydra's ConfigStore: ``hydra/sweeper=grid``."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class GridSweeperConf:
    """``hydra/sweeper=grid``: Hydra's basic sweeper (its keys), going on past jobs that failed in the project's
    way."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax.grid_sweeper.GridSweeper"
    max_batch_size: int | None = None  # jobs launched together; None: the whole grid
    params: dict[str, str] | None = None  # the grid, e.g. optim.lr: 0.03,0.1


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="fashion_mnist_softmax")
