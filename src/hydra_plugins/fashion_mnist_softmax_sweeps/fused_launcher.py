"""``hydra/launcher=fused``: a Hydra launcher that trains a sweep's jobs together (``fashion_mnist_softmax.fused``).

It takes each batch of jobs the sweeper hands it, the basic sweeper's whole grid or Optuna's batches of
``hydra.sweeper.n_jobs`` trials, and groups the jobs whose configs are equal but for each member's lr,
momentum, weight decay, seed and impl. Each group trains as one population; a job that cannot join one
(another optimizer, DDP, a step limit, a resumed run) runs alone, as under the basic launcher. Every job
gets its own job dir with ``.hydra/``, ``metrics.json``, checkpoints and logs, and its return value.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class _NoCallbacks:
    """While the job dirs are made: no job has started yet."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


class _Job:
    """A job: its config with the hydra node (as Hydra's callbacks take it), its return, its resolved task config."""

    def __init__(self, config: DictConfig, ret: JobReturn, resolved: dict[str, Any]) -> None:
        self.config, self.ret, self.resolved = config, ret, resolved


class FusedLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _run_job(self, config: DictConfig, task_function: TaskFunction, context: HydraContext) -> JobReturn:
        return run_job(
            hydra_context=context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _prepare(self, overrides: Sequence[str], idx: int) -> _Job:
        """The job's dir and ``.hydra/``, made as Hydra makes them for any job; no training yet."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = idx
        resolved: list[dict[str, Any]] = []
        context = dataclasses.replace(self.hydra_context, callbacks=_NoCallbacks())
        ret = self._run_job(config, lambda cfg: resolved.append(OmegaConf.to_container(cfg, resolve=True)), context)
        return _Job(config, ret, resolved[0])

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from fashion_mnist_softmax.console import paragraph
        from fashion_mnist_softmax.errors import JobFailed
        from fashion_mnist_softmax.fused.jobs import group_key, train_group, why_not_fused  # torch and Lightning
        from fashion_mnist_softmax.run.failures import ERROR_FILE

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            jobs.append(self._prepare(overrides, idx))
        groups: dict[str, list[_Job]] = {}
        for job in jobs:
            reason = why_not_fused(job.resolved)
            if reason is None:
                groups.setdefault(group_key(job.resolved), []).append(job)
            else:  # it runs alone, as under the basic launcher
                log.info(f"Job {job.config.hydra.job.num} runs alone: {reason}")
                job.ret = self._run_job(job.config, self.task_function, self.hydra_context)
        for members in groups.values():
            numbers = ", ".join(str(job.config.hydra.job.num) for job in members)
            log.info(f"Training {len(members)} job{'s' * (len(members) > 1)} as one fused group: {numbers}")
            for job in members:
                HydraConfig.instance().set_config(job.config)
                self.hydra_context.callbacks.on_job_start(config=job.config, task_function=self.task_function)
            # the jobs' compositions and an earlier group's trainer, model and data sit in reference cycles:
            # freed before this group loads its data
            gc.collect()
            try:
                outcomes = train_group([job.resolved for job in members])
            except Exception as e:  # what fails the group fails each of its jobs, as it would have failed each alone
                outcomes = [e] * len(members)
            for job, outcome in zip(members, outcomes, strict=True):
                HydraConfig.instance().set_config(job.config)
                num = job.config.hydra.job.num
                if isinstance(outcome, Exception):
                    reason = getattr(outcome, "message", f"{type(outcome).__name__}: {outcome}")
                    (Path(job.resolved["paths"]["output_dir"]) / ERROR_FILE).write_text(reason + "\n")
                    print(f"\nJob {num} failed: " + paragraph(reason), file=sys.stderr, flush=True)
                    job.ret.return_value, job.ret.status = JobFailed(f"Job {num} failed: {reason}"), JobStatus.FAILED
                else:
                    job.ret.return_value, job.ret.status = outcome, JobStatus.COMPLETED
                self.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.ret)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [job.ret for job in jobs]
