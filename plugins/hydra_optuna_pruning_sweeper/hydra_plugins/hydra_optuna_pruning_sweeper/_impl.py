"""The sweeper's work, imported when a search starts: Optuna's ask-and-tell loop around Hydra's launcher.

Each batch of ``n_jobs`` trials is asked of the study, launched as one batch of jobs, and told: a job's return
value completes its trial, a job that raised ``optuna.TrialPruned`` prunes it, any other failure FAILs it. The
study lives in ``storage`` (sqlite: a search resumes, and several commands share one study). Each job is told its
trial in its environment, where :func:`~.job_trial.trial` finds it.
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .job_trial import STUDIES, env_override

if TYPE_CHECKING:  # the plugin class imports this module when a search starts
    from .optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)


def distribution(override: Override) -> BaseDistribution | str:
    """The distribution that a sweep override names, in the official sweeper's syntax; a plain value as it is.

    ``choice(a, b)``: categorical; ``range(a, b, step)``: its values, integers or floats with a float in it;
    ``interval(a, b)``: uniform; ``tag(log, interval(a, b))``: log-uniform; ``tag(int, ...)``: integers.
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    value = override.value()
    if override.is_range_sweep():
        n = len(list(override.sweep_iterator()))
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):  # the last value, unrounded
            last = float(Decimal(str(value.start)) + Decimal(str(value.step)) * (n - 1))
            return FloatDistribution(value.start, last, step=value.step)
        return IntDistribution(int(value.start), int(value.start + value.step * (n - 1)), step=int(value.step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(f"{override.input_line} is not a search space Optuna knows")


def search_space(params: dict[str, str], arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The searched parameters and the fixed ones, from ``hydra.sweeper.params`` and the command line (which wins)."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        found, key = distribution(override), override.get_key_element()
        space.pop(key, None), fixed.pop(key, None)
        (space if isinstance(found, BaseDistribution) else fixed)[key] = found
    return space, fixed


def outcome(ret: JobReturn) -> Any:
    """What a job returned, or the exception it raised: its return value read as a completed job's, which, unlike
    a failed job's, Hydra hands over without printing the job's overrides as an error."""
    return dataclasses.replace(ret, status=JobStatus.COMPLETED).return_value


def sweep(sweeper: OptunaSweeper, arguments: list[str]) -> None:
    config = sweeper.config
    launcher = Plugins.instance().instantiate_launcher(
        config=config, hydra_context=sweeper.hydra_context, task_function=sweeper.task_function
    )
    space, fixed = search_space(dict(sweeper.params or {}), arguments)
    sampler = sweeper.sampler if isinstance(sweeper.sampler, optuna.samplers.BaseSampler) else None
    pruner = sweeper.pruner if isinstance(sweeper.pruner, optuna.pruners.BasePruner) else None
    prunes = pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner)
    # whether the jobs run in this process: Hydra's basic launcher's do, and a launcher may say that its own do
    basic = config.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    in_process = getattr(launcher, "runs_jobs_in_process", basic)
    for key, value in (("n_trials", sweeper.n_trials), ("n_jobs", sweeper.n_jobs)):
        if value < 1:  # refused before any trial is asked or job dir made, as below
            raise CompactHydraException(
                f"hydra.sweeper.{key}={value} is not valid: it must be a whole number of at least 1. Fix it on the "
                f"command line."
            )
    if prunes and not sweeper.storage and not in_process:  # refused before any trial is asked or job dir made
        raise CompactHydraException(
            f"A pruned search with the {type(launcher).__name__} needs a storage: its jobs run in other processes, "
            f"which reach their trials through the study's storage, and an in-memory study lives in this one. Add "
            f"hydra.sweeper.storage=sqlite:///logs/optuna.db (or prune with a launcher that runs the jobs in this "
            f"process)."
        )
    storage = optuna.storages.get_storage(sweeper.storage) if sweeper.storage else optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=sweeper.direction,
        load_if_exists=True,
    )
    STUDIES[study.study_name] = storage  # for the jobs that run in this process
    pruner_config = OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True) if prunes else None
    log.info(f"Study {study.study_name} in {sweeper.storage or 'memory'}: {sweeper.n_trials} new trials")
    sweep_dir, job_idx, failed, pruned = Path(config.hydra.sweep.dir), 0, 0, 0
    while job_idx < sweeper.n_trials:
        trials = [study.ask(space) for _ in range(min(sweeper.n_jobs, sweeper.n_trials - job_idx))]
        overrides = [
            [f"{key}={value}" for key, value in {**trial.params, **fixed}.items()]
            + [env_override(study.study_name, sweeper.storage, trial.number, pruner_config)]
            for trial in trials
        ]
        try:
            returns = launcher.launch(overrides, initial_job_idx=job_idx)
        except BaseException:  # Ctrl-C, SIGTERM: the batch's trials end as FAIL, never RUNNING
            for trial in trials:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        job_idx += len(returns)
        for trial, ret in zip(trials, returns, strict=True):
            value = outcome(ret)
            if isinstance(value, optuna.TrialPruned):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # its last reported value
                pruned += 1
            elif ret.status == JobStatus.COMPLETED and value is not None:  # None: no validation ran
                study.tell(trial, float(value))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failed += 1
        if failed / job_idx > sweeper.max_failure_rate:
            break
    counts = f"{job_idx - pruned - failed} completed, {pruned} pruned, {failed} failed"
    log.info(f"{job_idx} new trial{'s' * (job_idx != 1)}: {counts}")
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best = study.best_trial
        log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
