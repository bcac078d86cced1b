"""The Optuna sweeper's work, imported when a search starts: Optuna's ask-and-tell loop around Hydra's launcher.

Each batch of ``n_jobs`` trials is asked of the study, launched as one batch of jobs (so that the fused
launcher trains it as one population), and told: a job's return value completes its trial, a pruned job's
(:class:`~fashion_mnist_softmax.sweeps.trials.Pruned`) prunes it, a failed job FAILs it. The study lives in
``storage`` (sqlite: a search resumes, and several commands share one study). With a pruner, each job is told
its trial in its config (``trial``), to report to it.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fashion_mnist_softmax.config.checks import invalid
from fashion_mnist_softmax.console import refuse
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.sweeps.trials import STORAGES, Pruned

from .fused_launcher import FusedLauncher
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


def _value(value: Any) -> str:
    """A plain value, or a dict of them, in Hydra's override syntax, strings quoted."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def trial_override(study: optuna.Study, trial: optuna.Trial, url: str | None, pruner: dict[str, Any]) -> str:
    """The job's ``trial`` node in Hydra's override syntax: its trial, where the study is, and its pruner."""
    node = {"number": trial.number, "study_name": study.study_name, "storage": url, "pruner": pruner}
    return f"trial={_value(node)}"


def sweep(sweeper: OptunaSweeper, arguments: list[str]) -> None:
    config = sweeper.config
    launcher = Plugins.instance().instantiate_launcher(
        config=config, hydra_context=sweeper.hydra_context, task_function=sweeper.task_function
    )
    space, fixed = search_space(dict(sweeper.params or {}), arguments)
    sampler = sweeper.sampler if isinstance(sweeper.sampler, optuna.samplers.BaseSampler) else None
    pruner = sweeper.pruner if isinstance(sweeper.pruner, optuna.pruners.BasePruner) else None
    prunes = pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner)
    # the jobs run in this process: the basic launcher's, and the fused launcher's unless submitit runs its groups
    fused_here = isinstance(launcher, FusedLauncher) and launcher.executor is None
    in_process = type(launcher).__name__ == "BasicLauncher" or fused_here
    for key, value in (("n_trials", sweeper.n_trials), ("n_jobs", sweeper.n_jobs)):
        if value < 1:  # refused before any trial is asked or job dir made, as below
            refuse(invalid(f"hydra.sweeper.{key}", value, "a whole number of at least 1"))
    if prunes and not sweeper.storage and not in_process:  # refused before any trial is asked or job dir made
        refuse(
            UserError(
                f"A pruned search with the {type(launcher).__name__} needs a storage: its jobs run in other processes, "
                f"which reach their trials through the study's storage, and an in-memory study lives in this one. Add "
                f"hydra.sweeper.storage=sqlite:///logs/optuna.db (or prune with the basic or fused launcher)."
            )
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
    STORAGES[study.study_name] = storage  # for the jobs that run in this process
    pruner_config = OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True)
    log.info(f"Study {study.study_name} in {sweeper.storage or 'memory'}: {sweeper.n_trials} new trials")
    sweep_dir, job_idx, failed, pruned = Path(config.hydra.sweep.dir), 0, 0, 0
    while job_idx < sweeper.n_trials:
        trials = [study.ask(space) for _ in range(min(sweeper.n_jobs, sweeper.n_trials - job_idx))]
        overrides = [
            [f"{key}={value}" for key, value in {**trial.params, **fixed}.items()]
            + ([trial_override(study, trial, sweeper.storage, pruner_config)] if prunes else [])
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
            value = ret.return_value if ret.status == JobStatus.COMPLETED else None  # None: no validation ran
            if isinstance(value, Pruned):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # its last reported val/acc
                pruned += 1
            elif value is not None:
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
