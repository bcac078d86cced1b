"""``hydra/launcher=fused``: a Hydra launcher that trains a sweep's jobs of fashion-mnist-softmax together.

It takes each batch of jobs the sweeper hands it, the basic sweeper's whole grid or Optuna's batches of
``hydra.sweeper.n_jobs`` trials, and groups the jobs whose configs are equal but for each member's lr,
momentum, weight decay, seed and impl. Each group trains as one population; a job that cannot join one
(another optimizer, DDP, a step limit, a resumed run) runs alone, as under the basic launcher. Every job
gets its own job dir with ``.hydra/``, ``metrics.json``, checkpoints and logs, and its return value. The groups
train in the launcher's process, one after the other, or, with ``hydra.launcher.executor=slurm`` (or ``local``),
each as a job of submitit's executor, all at once; the job dirs are made, and the values handed back, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class FusedLauncher(Launcher):
    composes_every_job_first = True  # what a sweeper's check of a batch would do again (hydra/sweeper=grid)

    def __init__(self, executor: str | None = None, **settings: Any) -> None:
        self.executor, self.settings = executor, settings  # submitit's, when groups run as its jobs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    @property
    def runs_jobs_in_process(self) -> bool:
        """Whether the jobs run in the sweeper's process (an Optuna search's in-memory study reaches them)."""
        return self.executor is None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core  # torch and Lightning, only when a sweep runs

        return _core.launch(self, job_overrides, initial_job_idx)
