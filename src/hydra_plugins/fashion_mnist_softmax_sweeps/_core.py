"""The fused launcher's work, imported when a sweep launches: job dirs as Hydra makes them, groups, training."""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_mnist_softmax.console import refuse
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.fused.jobs import group_key, train_group, why_not_fused
from fashion_mnist_softmax.run.failures import job_failed

from .fused_launcher import FusedLauncher

log = logging.getLogger(__name__)


class _NoCallbacks:
    """While the job dirs are made: no job has started yet."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


@dataclasses.dataclass
class _Job:
    """A job: its config with the hydra node (as Hydra's callbacks take it), its return, its task config resolved
    and as written."""

    config: DictConfig
    ret: JobReturn
    resolved: dict[str, Any]
    written: dict[str, Any]


def _run_job(config: DictConfig, task_function: TaskFunction, context: HydraContext) -> JobReturn:
    return run_job(
        hydra_context=context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _compose(launcher: FusedLauncher, overrides: Sequence[str], idx: int) -> DictConfig:
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = config.hydra.job.num = idx
    return config


def _prepare(launcher: FusedLauncher, config: DictConfig) -> _Job:
    """The job's dir and ``.hydra/``, made as Hydra makes them for any job; no training yet."""
    task: list[dict[str, Any]] = []

    def keep(cfg: DictConfig) -> None:
        task.extend(OmegaConf.to_container(cfg, resolve=resolve) for resolve in (True, False))

    ret = _run_job(config, keep, dataclasses.replace(launcher.hydra_context, callbacks=_NoCallbacks()))
    return _Job(config, ret, *task)


def _hydra_logging(launcher: FusedLauncher) -> None:
    """Hydra's own logging again, which a job's run replaces with its job logging."""
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)


def _start(launcher: FusedLauncher, members: list[_Job]) -> None:
    for job in members:
        HydraConfig.instance().set_config(job.config)
        launcher.hydra_context.callbacks.on_job_start(config=job.config, task_function=launcher.task_function)


def _outcome(train: Callable[[], list[Any]], size: int) -> list[Any]:
    """A group's outcomes: what fails the group fails each of its jobs, as it would have failed each alone."""
    try:
        return train()
    except Exception as e:
        return [e] * size


def _executor(launcher: FusedLauncher) -> Any:
    """submitit's executor for the groups, with the launcher's settings; None: the groups train in this process."""
    if launcher.executor is None:
        return None
    if launcher.executor not in ("local", "slurm"):
        refuse(
            UserError(f"hydra.launcher.executor={launcher.executor} is not valid: it must be local or slurm, or null.")
        )
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=launcher.settings["submitit_folder"], cluster=launcher.executor)
    except RuntimeError as e:  # submitit's own words, e.g. that no srun is found off a SLURM cluster
        refuse(UserError(f"hydra.launcher.executor={launcher.executor} cannot start: {e}"))
    settings = OmegaConf.to_container(OmegaConf.create(launcher.settings))  # plain values, as submitit takes them
    executor.update_parameters(
        name="fused", **{k: v for k, v in settings.items() if k != "submitit_folder" and v is not None}
    )
    return executor


def _outcomes(launcher: FusedLauncher, executor: Any, groups: list[list[_Job]]) -> Iterator[list[Any]]:
    """Each group's outcomes, in order: trained in this process one group after the other, or each group a job of
    submitit's ``executor``, all submitted at once."""
    if executor is None:
        for members in groups:
            _start(launcher, members)
            # the jobs' compositions and an earlier group's trainer, model and data sit in reference cycles: freed
            # before this group loads its data
            gc.collect()
            yield _outcome(functools.partial(train_group, [job.resolved for job in members]), len(members))
        return
    for members in groups:
        _start(launcher, members)
    submitted = [executor.submit(train_group, [job.resolved for job in members]) for members in groups]
    ids = ", ".join(group_job.job_id for group_job in submitted)
    log.info(
        f"Submitted the groups to submitit's {launcher.executor} executor as jobs {ids}: logs in {executor.folder}"
    )
    for members, group_job in zip(groups, submitted, strict=True):
        yield _outcome(group_job.result, len(members))


def launch(launcher: FusedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    _hydra_logging(launcher)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    executor = _executor(launcher)  # a mistake in its settings is refused before any job dir is made
    # every job composed before any dir is made: a job that cannot be composed stops the sweep, and leaves no dirs
    configs = [_compose(launcher, overrides, idx) for idx, overrides in enumerate(job_overrides, initial_job_idx)]
    jobs = []
    for config, overrides in zip(configs, job_overrides, strict=True):
        log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
        jobs.append(_prepare(launcher, config))
        _hydra_logging(launcher)
    groups: dict[str, list[_Job]] = {}
    alone: dict[int, str] = {}
    for job in jobs:
        if (reason := why_not_fused(job.resolved)) is None:
            groups.setdefault(group_key(job.resolved, job.written), []).append(job)
        else:
            alone[job.config.hydra.job.num] = reason
    sizes = " + ".join(str(len(members)) for members in groups.values())
    log.info(
        f"Launching {len(jobs)} jobs as {len(groups)} fused group{'s' * (len(groups) != 1)}"
        + (f" of {sizes}" if groups else "")
        + "".join(f"; job {num} alone: {reason}" for num, reason in alone.items())
    )
    for job in jobs:  # as under the basic launcher
        if job.config.hydra.job.num in alone:
            job.ret = _run_job(job.config, launcher.task_function, launcher.hydra_context)
            _hydra_logging(launcher)
    members_of = list(groups.values())
    for members, outcomes in zip(members_of, _outcomes(launcher, executor, members_of), strict=True):
        for job, outcome in zip(members, outcomes, strict=True):
            HydraConfig.instance().set_config(job.config)
            num = job.config.hydra.job.num
            if isinstance(outcome, Exception):
                failure = job_failed(outcome, job.resolved["paths"]["output_dir"], num)
                job.ret.return_value, job.ret.status = failure, JobStatus.FAILED
            else:
                job.ret.return_value, job.ret.status = outcome, JobStatus.COMPLETED
            launcher.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.ret)
    _hydra_logging(launcher)
    return [job.ret for job in jobs]
