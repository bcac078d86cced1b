"""The fused launcher's config, registered as ``hydra/launcher=fused``."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    """``hydra/launcher=fused``: train the jobs of each batch the sweeper hands over as fused groups."""

    _target_: str = "hydra_plugins.fashion_mnist_softmax_sweeps.fused_launcher.FusedLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="fashion_mnist_softmax"
)
