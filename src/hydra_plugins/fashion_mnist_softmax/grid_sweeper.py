"""``hydra/sweeper=grid``, the project's default sweeper (``conf/hydra/default.yaml``): Hydra's basic sweeper, the
same grid and batches, going on past each job that failed in the project's way.

Such a job said why on the console and in its ``error.txt``; Hydra's basic sweeper would stop the sweep at its
batch's end, print it again with its overrides, and add a stack-trace tip. Here it is handed to the sweeper as
ended; ``summary.md`` lists it, and the multirun ends with status 1 (``fashion_mnist_softmax/sweep_summary.py``).
A job that failed before it could say why (its config could not be composed) still stops the sweep, as in Hydra.
Under a launcher that composes every job of a batch before it runs any, a batch is composed once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # Hydra exports it nowhere else
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

ERROR_FILE = "error.txt"  # fashion_mnist_softmax.run.failures.ERROR_FILE, without importing the project at scan


def said_why(job: JobReturn) -> bool:
    """Whether a failed job wrote its reason into its job dir."""
    return job.status == JobStatus.FAILED and (Path(job.hydra_cfg.hydra.runtime.output_dir) / ERROR_FILE).is_file()


class _GoOnPastFailedJobs:
    """A launcher whose jobs that said why they failed reach the sweeper as ended."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        return [dataclasses.replace(job, status=JobStatus.COMPLETED) if said_why(job) else job for job in returns]


class GridSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = _GoOnPastFailedJobs(self.launcher)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose each job of the batch, so that a job that cannot be composed stops the sweep before any job
        runs; unless the launcher says that it composes every job before it runs any (the fused launcher does)."""
        if not getattr(self.launcher.launcher, "composes_every_job_first", False):
            super().validate_batch_is_legal(batch)
