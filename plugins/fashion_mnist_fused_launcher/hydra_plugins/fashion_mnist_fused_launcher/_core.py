"""The fused launcher's work, imported when a sweep launches: job dirs as Hydra makes them, groups, training.

The jobs are composed, and their dirs made, in worker processes forked before torch and Lightning are imported,
so that the compositions (Hydra's, one per job) and the import run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import ConfigCompositionException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_mnist_softmax.config.checks import check_config, usable_cores
from fashion_mnist_softmax.console import refuse
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.run.failures import composition_error, is_pruned, job_failed

if TYPE_CHECKING:
    from .fused_launcher import FusedLauncher

log = logging.getLogger(__name__)
UNRESOLVED = "its config does not resolve, or is refused"
WRITTEN = ("callbacks", "logger")  # what groups jobs as written: ${optim.lr} in them is one value for every member


class _NoCallbacks:
    """While the job dirs are made: no job has started yet."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


@dataclasses.dataclass
class _Job:
    """A job: its config with the hydra node (as Hydra's callbacks take it), its return, its task config resolved
    and checked (None where it does not resolve, or is refused), and its callbacks and loggers as written (their
    interpolations unresolved)."""

    config: DictConfig
    ret: JobReturn
    resolved: dict[str, Any] | None
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
        written = {key: OmegaConf.to_container(cfg[key]) for key in WRITTEN if isinstance(cfg.get(key), DictConfig)}
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if _trains(config):  # the others run alone, and check themselves as they start
            check_config(cfg, "train", machine=False)  # the machine, once for each group
        task.extend([resolved, written])

    ret = _run_job(config, keep, dataclasses.replace(launcher.hydra_context, callbacks=_NoCallbacks()))
    if ret.status == JobStatus.FAILED:  # it runs alone, and fails as it would
        ret.return_value = None
        return _Job(config, ret, None, {})
    return _Job(config, ret, *task)


def _trains(config: DictConfig) -> bool:
    """Whether the job is one of train.py's: only those fuse."""
    return config.hydra.job.config_name == "train"


def _hydra_logging(launcher: FusedLauncher) -> None:
    """Hydra's own logging again, which a job's run replaces with its job logging."""
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)


def _start(launcher: FusedLauncher, members: list[_Job]) -> None:
    for job in members:
        HydraConfig.instance().set_config(job.config)
        launcher.hydra_context.callbacks.on_job_start(config=job.config, task_function=launcher.task_function)


def _outcomes_of(train: Callable[[], list[Any]], size: int) -> list[Any]:
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


def _group(members: list[_Job]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """What ``train_group`` takes: the jobs' resolved configs, and the environment each job runs in
    (``hydra.job.env_set``, which Hydra sets around a job's task)."""
    envs = [OmegaConf.to_container(job.config.hydra.job.env_set, resolve=True) for job in members]
    return [job.resolved for job in members], envs


def _outcomes(
    launcher: FusedLauncher, executor: Any, groups: list[list[_Job]], train_group: Callable[..., list[Any]]
) -> Iterator[list[Any]]:
    """Each group's outcomes, in order, from ``train_group``: in this process one group after the other, or each
    group a job of submitit's ``executor``, all submitted at once."""
    if executor is None:
        for members in groups:
            _start(launcher, members)
            # the jobs' compositions and an earlier group's trainer, model and data sit in reference cycles: freed
            # before this group loads its data
            gc.collect()
            yield _outcomes_of(functools.partial(train_group, *_group(members)), len(members))
        return
    for members in groups:
        _start(launcher, members)
    submitted = [executor.submit(train_group, *_group(members)) for members in groups]
    ids = ", ".join(group_job.job_id for group_job in submitted)
    log.info(
        f"Submitted the groups to submitit's {launcher.executor} executor as jobs {ids}: logs in {executor.folder}"
    )
    for members, group_job in zip(groups, submitted, strict=True):
        yield _outcomes_of(group_job.result, len(members))


def _picklable_failure(num: int, e: Exception) -> tuple[int, Exception]:
    """What stopped job ``num``, as it can cross to the launcher's process: a composition that failed as the
    project's paragraph (a pickled exception loses its cause, where Hydra keeps what went wrong), and an exception
    that would not unpickle as its type and words."""
    if isinstance(e, ConfigCompositionException):
        e = composition_error(e)
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        e = RuntimeError(f"{type(e).__name__}: {e}")
    return num, e


def _compose_and_prepare(
    launcher: FusedLauncher, numbered: list[tuple[int, Sequence[str]]], composed: Any = None
) -> Any:
    """A share of the jobs, composed, then given their dirs: the jobs, or the number of the job that stopped them
    with the exception that did.

    ``composed`` (a barrier and an event, shared with the workers of the other shares) holds the dirs back until
    every share is composed, so that a job that cannot be composed stops the sweep before any dir exists; a share
    that another one's failure stopped returns None.
    """
    barrier, failed = composed or (None, None)
    configs = []
    for idx, overrides in numbered:
        try:
            configs.append(_compose(launcher, overrides, idx))
        except Exception as e:
            if composed:
                failed.set()
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()
            return _picklable_failure(idx, e)
    if composed:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # another worker died
            return None
        if failed.is_set():
            return None
    jobs = []
    for config in configs:
        try:
            jobs.append(_prepare(launcher, config))
        except Exception as e:
            return _picklable_failure(config.hydra.job.num, e)
        _hydra_logging(launcher)
    return jobs


def _worker(launcher: FusedLauncher, numbered: list[tuple[int, Sequence[str]]], composed: Any, pipe: Any) -> None:
    # on a core they share, the workers yield to the launcher's import of torch and Lightning, which every group needs
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the process group: the launcher says it stopped
        pipe.send(_compose_and_prepare(launcher, numbered, composed))


def _start_jobs(launcher: FusedLauncher, numbered: list[tuple[int, Sequence[str]]]) -> Callable[[], list[_Job]]:
    """Start composing the jobs and making their dirs, and return the function that waits for the jobs, in order
    (or raises what stopped them).

    The work is shared by forked workers, one a core, while this process imports torch and Lightning. Where a fork
    cannot be (no fork, or torch already loaded: its threads make a fork unsafe), this process does it first.
    """
    if "torch" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        outcomes = [_compose_and_prepare(launcher, numbered)]
        return lambda: _in_order(outcomes)
    n = min(usable_cores(), len(numbered))
    context = multiprocessing.get_context("fork")
    composed = (context.Barrier(n), context.Event())
    pipes, workers = [], []
    for i in range(n):
        receive, send = context.Pipe(duplex=False)
        workers.append(context.Process(target=_worker, args=(launcher, numbered[i::n], composed, send), daemon=True))
        workers[-1].start()
        send.close()
        pipes.append(receive)

    def wait() -> list[_Job]:
        """Each worker's outcome, as it comes: one that dies (killed, out of memory) frees the others from the
        barrier and stops the sweep."""
        outcomes: dict[int, Any] = {}
        while len(outcomes) < n:
            waiting = [i for i in range(n) if i not in outcomes]
            ready = multiprocessing.connection.wait([x for i in waiting for x in (pipes[i], workers[i].sentinel)])
            for i in waiting:
                if pipes[i] in ready or workers[i].sentinel in ready:
                    try:
                        outcomes[i] = pipes[i].recv()
                    except EOFError:  # it died before it sent its outcome
                        composed[0].abort()
                        workers[i].join()
                        outcomes[i] = (numbered[i][0], _died([idx for idx, _ in numbered[i::n]], workers[i].exitcode))
        for worker in workers:
            worker.join()
        return _in_order(list(outcomes.values()))

    return wait


def _died(nums: list[int], exitcode: int | None) -> UserError:
    return UserError(
        f"The process composing jobs {', '.join(map(str, nums))} of this sweep stopped before it was done (exit code "
        f"{exitcode}; killed, or out of memory), so the sweep stops before any job trains. Run it again."
    )


def _in_order(outcomes: list[Any]) -> list[_Job]:
    """The jobs in order, or what stopped the first job that failed."""
    if stopped := [outcome for outcome in outcomes if isinstance(outcome, tuple)]:
        error = min(stopped, key=lambda num_error: num_error[0])[1]
        if isinstance(error, UserError):
            refuse(error)
        raise error
    return sorted((job for jobs in outcomes for job in jobs), key=lambda job: job.config.hydra.job.num)


def launch(launcher: FusedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    _hydra_logging(launcher)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    executor = _executor(launcher)  # a mistake in its settings is refused before any job dir is made
    numbered = list(enumerate(job_overrides, initial_job_idx))
    for idx, overrides in numbered:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    wait_for_jobs = _start_jobs(launcher, numbered)
    if _trains(launcher.config):
        from ._groups import group_key, train_group, why_not_fused  # torch and Lightning, meanwhile
    else:  # another app's jobs all run alone, as under the basic launcher: nothing of torch is needed
        group_key = train_group = why_not_fused = None

    # what is alive now (Hydra, torch, Lightning: hundreds of thousands of objects) outlives the launch: it is left
    # out of the collections until the launch ends, which then take milliseconds, not a tenth of a second each (not
    # collected first: that too takes a tenth of a second, for the few dozen objects that imports leave behind)
    frozen_before = gc.get_freeze_count()
    try:
        gc.freeze()
        jobs = wait_for_jobs()
        groups: dict[str, list[_Job]] = {}
        alone: dict[int, str] = {}
        for job in jobs:
            if not _trains(job.config):
                reason = "not a job of train.py"
            elif job.resolved is None:
                reason = UNRESOLVED
            else:
                reason = why_not_fused(job.resolved)
            if reason is None:
                groups.setdefault(group_key(job.resolved, job.written), []).append(job)
            else:
                alone[job.config.hydra.job.num] = reason
        sizes = " + ".join(str(len(members)) for members in groups.values())
        log.info(
            f"Launching {len(jobs)} job{'s' * (len(jobs) != 1)} as {len(groups)} fused group{'s' * (len(groups) != 1)}"
            + (f" of {sizes}" if groups else "")
            + "".join(f"; job {num} alone: {reason}" for num, reason in alone.items())
        )
        for job in jobs:  # as under the basic launcher
            if job.config.hydra.job.num in alone:
                job.ret = _run_job(job.config, launcher.task_function, launcher.hydra_context)
                _hydra_logging(launcher)
        members_of = list(groups.values())
        for members, outcomes in zip(members_of, _outcomes(launcher, executor, members_of, train_group), strict=True):
            for job, outcome in zip(members, outcomes, strict=True):
                HydraConfig.instance().set_config(job.config)
                num = job.config.hydra.job.num
                if is_pruned(outcome):  # its sweeper's to tell, as a lone job's TrialPruned is
                    job.ret.return_value, job.ret.status = outcome, JobStatus.FAILED
                elif isinstance(outcome, Exception):
                    # a member's checkpoints hold its weights only: a full disk's paragraph says no resume command
                    failure = job_failed(outcome, job.resolved["paths"]["output_dir"], num, resumable=False)
                    job.ret.return_value, job.ret.status = failure, JobStatus.FAILED
                else:
                    job.ret.return_value, job.ret.status = outcome, JobStatus.COMPLETED
                launcher.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.ret)
        _hydra_logging(launcher)
        return [job.ret for job in jobs]
    finally:
        if not frozen_before:  # what a caller froze stays so
            gc.unfreeze()
