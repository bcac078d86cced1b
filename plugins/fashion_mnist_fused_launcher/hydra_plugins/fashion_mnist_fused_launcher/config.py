"""The launcher's config in Hydra's ConfigStore: ``hydra/launcher=fused``."""

# no "from __future__ import annotations": Hydra loads this module outside sys.modules, where dataclasses
# cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    """``hydra/launcher=fused``: train the jobs of each batch the sweeper hands over as fused groups, in this
    process, or each group as a job of submitit's ``local`` or ``slurm`` executor, with its settings."""

    _target_: str = "hydra_plugins.fashion_mnist_fused_launcher.fused_launcher.FusedLauncher"
    executor: str | None = None  # None: this process; local or slurm: each group a submitit job
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: int | None = None
    slurm_partition: str | None = None
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="fashion_mnist_fused_launcher"
)
