"""The sweeper's work, imported when a search starts: Optuna's ask-and-tell loop around Hydra's launcher.

Each batch of ``n_jobs`` trials is asked of the study, launched as one batch of jobs, and told: a job's return
value (a number, or one for each direction) completes its trial, a job that raised ``optuna.TrialPruned`` prunes
it, and any other exception, or a return value that is not as many numbers as directions, fails it, with the
reason logged. When more than ``max_failure_rate`` of a batch failed, the search ends in its first failure. No
trial is left RUNNING: a batch cut short (Ctrl-C, an error) fails its trials. The study lives in ``storage``
(where a search resumes, and several commands share one study) or in memory. Each job is told its trial in its
environment, where :func:`~.job_trial.trial` finds it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import GridSampler, QMCSampler
from optuna.trial import Trial, TrialState

from .job_trial import STUDIES, env_override

if TYPE_CHECKING:  # the plugin class imports this module when a search starts
    from .optuna_sweeper import OptunaSweeper

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
log = logging.getLogger(__name__)


def create_optuna_distribution_from_override(override: Override) -> Any:
    """The distribution that a sweep override names, as Hydra's own Optuna sweeper reads it; a plain value as
    the string it is.

    ``choice(a, b)`` and ``shuffle(range(a, b))``: categorical; ``range(a, b, step)``: the steps from ``a`` up to
    ``b`` included, floats if any of the three is one; ``interval(a, b)``: uniform floats, integers where
    ``int(...)`` casts it; ``tag(log, ...)``: on a log scale.
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, start + (stop - start) // step * step, step=step)
        # the last step at or below stop, counted in decimals so that steps of 0.1 land on their values
        first, last, size = (Decimal(str(v)) for v in (start, stop, step))
        return FloatDistribution(start, float(first + (last - first) // size * size), step=step)
    log_scale = "log" in value.tags  # an interval, the sweep left
    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log_scale)
    return FloatDistribution(value.start, value.end, log=log_scale)


def create_params_from_overrides(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The searched parameters and the fixed ones, from override lines; a key given again keeps its last line."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        found, key = create_optuna_distribution_from_override(override), override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        (space if isinstance(found, BaseDistribution) else fixed)[key] = found
    return space, fixed


def grid_values(key: str, distribution: BaseDistribution) -> list[Any]:
    """Every value of parameter ``key``'s distribution, for a grid."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        low, high, step = (Decimal(str(v)) for v in (distribution.low, distribution.high, distribution.step))
        return [float(low + i * step) for i in range(int((high - low) / step) + 1)]
    raise CompactHydraException(
        f"hydra/sweeper/sampler=grid goes through the values of choice and range, and {key} is an interval."
    )


def make_sampler(
    config: DictConfig | None, space: dict[str, BaseDistribution], stored: int
) -> optuna.samplers.BaseSampler | None:
    """The sampler of ``hydra.sweeper.sampler``: a grid gets the values of the search space; a seeded sampler gets
    its seed plus the ``stored`` trials of the study, so that a resumed study draws new trials rather than its
    first ones again (but QMC, whose sequence goes on from the trials that the study holds)."""
    if config is None:
        return None
    sampler, given = get_class(config._target_), {}
    if issubclass(sampler, GridSampler):
        given["search_space"] = {key: grid_values(key, distribution) for key, distribution in space.items()}
    if config.get("seed") is not None and not issubclass(sampler, QMCSampler):
        given["seed"] = config.seed + stored
    return instantiate(config, **given, _convert_="all")


def trials_stored(storage: optuna.storages.BaseStorage, study_name: str | None) -> int:
    """How many trials a stored study holds; 0 for a new one."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name)) if study_name else 0
    except KeyError:  # no such study yet
        return 0


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """The study's storage: ``url``'s, or memory's without one. A URL that cannot be opened is refused in one line
    that says why: a malformed URL, a sqlite file in a folder that does not exist or that is not a database, a
    database whose driver is not installed (raised from that ImportError)."""
    if not url:
        return optuna.storages.InMemoryStorage()
    import sqlalchemy  # Optuna's RDB storage is SQLAlchemy's

    said = f"hydra.sweeper.storage={url}"
    forms = "a sqlite file is sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db"
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.NoSuchModuleError:
        raise CompactHydraException(f"{said} names a database that SQLAlchemy knows no dialect of.") from None
    except sqlalchemy.exc.ArgumentError:
        raise CompactHydraException(f"{said} is not a database URL: {forms}.") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).absolute().parent
        if not folder.is_dir():
            raise CompactHydraException(f"{said} names a sqlite file in {folder}, a folder that does not exist.")
    try:
        return optuna.storages.get_storage(url)
    except ImportError as e:
        module = getattr(e.__cause__, "name", None) or "that it names"
        raise CompactHydraException(
            f"{said} needs its database's driver, the Python module {module}, which is not installed: install it, or "
            f"keep the study in a sqlite file (hydra.sweeper.storage=sqlite:///optuna.db)."
        ) from e
    except sqlalchemy.exc.NoSuchModuleError:
        raise CompactHydraException(f"{said} names a database that SQLAlchemy knows no dialect of.") from None
    except sqlalchemy.exc.ArgumentError:
        raise CompactHydraException(
            f"{said} is not a valid {parsed.get_backend_name()} URL" + (f": {forms}." if sqlite else ".")
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise CompactHydraException(f"{said} cannot be opened as an Optuna storage: {reason}.") from None


def check_settings(sweeper: OptunaSweeper, directions: list[str]) -> None:
    """Refuse, before any trial is asked or job dir made, settings that no search runs with."""
    rate, known = sweeper.max_failure_rate, bool(directions) and {*directions} <= {"minimize", "maximize"}
    rules = [
        ("n_trials", sweeper.n_trials, sweeper.n_trials >= 1, "a whole number of at least 1"),
        ("n_jobs", sweeper.n_jobs, sweeper.n_jobs >= 1, "a whole number of at least 1"),
        ("max_failure_rate", rate, 0 <= rate <= 1, "a fraction, from 0.0 to 1.0"),
        ("direction", sweeper.direction, known, "minimize, maximize, or a list of them"),
    ]
    for key, value, valid, rule in rules:
        if not valid:
            raise CompactHydraException(f"hydra.sweeper.{key}={value} is not valid: it must be {rule}.")
    for group in ("sampler", "pruner"):
        config = getattr(sweeper, group)
        if missing := [key for key in config or {} if OmegaConf.is_missing(config, key)]:
            raise CompactHydraException(
                f"hydra.sweeper.{group}.{missing[0]} has no value, and {config._target_} has no default for it."
            )


def suggest(
    trial: Trial,
    space: dict[str, BaseDistribution],
    fixed: dict[str, str],
    configure: Callable[[DictConfig, Trial], None] | None,
    config: DictConfig,
) -> None:
    """Draw a new trial's parameters: those of the search space, then those that ``custom_search_space`` suggests,
    which finds the fixed parameters in the trial's user attributes (as in Hydra's own Optuna sweeper)."""
    for key, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            trial.suggest_categorical(key, distribution.choices)
        else:
            kind = trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
            kind(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    for key, value in fixed.items():
        trial.set_user_attr(key, value)
    if configure is not None:
        configure(config, trial)
        if both := sorted(trial.params.keys() & fixed.keys()):
            raise ValueError(f"custom_search_space suggests {both}, which the overrides fix: leave them to one.")


def outcome(ret: JobReturn) -> Any:
    """What a job returned, or the exception it raised: its return value read as a completed job's, which, unlike
    a failed job's, Hydra hands over without printing the job's overrides as an error."""
    return dataclasses.replace(ret, status=JobStatus.COMPLETED).return_value


def finish(
    study: optuna.Study, trial: Trial, values: list[float] | None = None, state: TrialState = TrialState.COMPLETE
) -> None:
    """``study.tell``, where a grid sampler's last trial ends the grid."""
    try:
        study.tell(trial, values, state)
    except RuntimeError:  # a grid done stops its study, which Optuna refuses outside optimize(), once it told it
        if not (isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study)):
            raise


def tell(study: optuna.Study, trial: Trial, ret: JobReturn) -> tuple[TrialState, BaseException | None]:
    """Tell the study how the trial's job ended, and where (its ``job_dir``, a user attribute: the dashboard
    leads to the job's files); the trial's state, and why it failed."""
    if ret.hydra_cfg is not None:
        trial.set_user_attr("job_dir", str(ret.hydra_cfg.hydra.runtime.output_dir))
    value = outcome(ret)
    if isinstance(value, optuna.TrialPruned):
        finish(study, trial, state=TrialState.PRUNED)  # with the last value that the job reported
        return TrialState.PRUNED, None
    if ret.status != JobStatus.COMPLETED:
        finish(study, trial, state=TrialState.FAIL)
        return TrialState.FAIL, value
    try:
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        finish(study, trial, [float(v) for v in values])  # Optuna refuses NaN, and too few or too many values
        return TrialState.COMPLETE, None
    except (TypeError, ValueError) as e:
        finish(study, trial, state=TrialState.FAIL)
        n = len(study.directions)
        return TrialState.FAIL, ValueError(
            f"The job returned {value!r}, and hydra/sweeper=optuna takes {n} number{'s' * (n > 1)}, one for each "
            f"hydra.sweeper.direction: {e}"
        )


def reason(error: BaseException) -> str:
    """An exception in a line, as Hydra reports it: a CompactHydraException by its message alone."""
    return str(error) if isinstance(error, CompactHydraException) else f"{type(error).__name__}: {error}"


def progress(study: optuna.Study, states: Counter[TrialState], told: int, n_trials: int) -> str:
    """Where a search stands after a batch: its new trials by how they ended, and the study's best value so far
    (with one direction)."""
    line = f"{told} of {n_trials} new trials ended: {counted(states)}"
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) == 1 and completed:
        best = study.best_trial
        line += f"; best value {best.value:.6g} (trial {best.number})"
    return line


def counted(states: Counter[TrialState]) -> str:
    ended = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    return ", ".join(f"{states[state]} {word}" for state, word in ended.items())


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """``optimization_results.yaml``: the best trial, or with several directions the best trials (Pareto front)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("No trial completed: no optimization_results.yaml.")
        return
    if len(study.directions) == 1:
        best = study.best_trial
        log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    else:
        solutions = [{"params": t.params, "values": t.values} for t in study.best_trials]
        log.info(f"{len(solutions)} best trials, none of which another trial beats in every direction")
        results = {"name": "optuna", "solutions": solutions}
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def sweep(sweeper: OptunaSweeper, arguments: list[str]) -> None:
    """The search of ``hydra/sweeper=optuna``: ``n_trials`` new trials of the study, in batches of ``n_jobs``."""
    config = sweeper.config
    launcher = Plugins.instance().instantiate_launcher(
        config=config, hydra_context=sweeper.hydra_context, task_function=sweeper.task_function
    )
    params = [f"{key}={value}" for key, value in (sweeper.params or {}).items()]
    space, fixed = create_params_from_overrides(params + list(arguments))  # the command line's lines last: they win
    directions = [sweeper.direction] if isinstance(sweeper.direction, str) else list(sweeper.direction)
    check_settings(sweeper, directions)
    pruner = instantiate(sweeper.pruner) if sweeper.pruner is not None else None
    prunes = pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner)
    # whether the jobs run in this process: Hydra's basic launcher's do, and a launcher may say that its own do
    in_process = getattr(launcher, "runs_jobs_in_process", config.hydra.launcher._target_ == BASIC_LAUNCHER)
    if prunes and not sweeper.storage and not in_process:
        raise CompactHydraException(
            f"A pruned search with the {type(launcher).__name__} needs a storage: its jobs run in other processes, "
            f"which reach their trials through the study's storage, and an in-memory study lives in this one. Add "
            f"hydra.sweeper.storage=sqlite:///logs/optuna.db (or prune with a launcher that runs the jobs in this "
            f"process)."
        )
    storage = open_storage(sweeper.storage)
    sampler = make_sampler(sweeper.sampler, space, trials_stored(storage, sweeper.study_name))
    n_trials = sweeper.n_trials
    if isinstance(sampler, GridSampler):
        n_trials = min(n_trials, math.prod(len(grid_values(*item)) for item in space.items()))
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=directions,
        load_if_exists=True,
    )
    STUDIES[study.study_name] = storage  # for the jobs that run in this process
    configure = get_method(sweeper.custom_search_space) if sweeper.custom_search_space else None
    pruner_config = OmegaConf.to_container(sweeper.pruner, resolve=True) if prunes else None
    log.info(
        f"Study {study.study_name} in {sweeper.storage or 'memory'}: {n_trials} new trials, "
        f"{type(study.sampler).__name__}, {' and '.join(directions)}"
    )
    job_idx, states = 0, Counter[TrialState]()
    while job_idx < n_trials and not (isinstance(sampler, GridSampler) and sampler.is_exhausted(study)):
        trials: list[Trial] = []
        try:
            for _ in range(min(sweeper.n_jobs, n_trials - job_idx)):
                trials.append(study.ask())  # a sampler that fails draws in suggest(), where the trial is held
                suggest(trials[-1], space, fixed, configure, config)
            overrides = [
                [f"{key}={value}" for key, value in {**trial.params, **fixed}.items()]
                + [env_override(study.study_name, sweeper.storage, trial.number, pruner_config)]
                for trial in trials
            ]
            returns = launcher.launch(overrides, initial_job_idx=job_idx)
        except BaseException:  # Ctrl-C, SIGTERM, an error: the batch's trials end as FAIL, never RUNNING
            for trial in trials:
                study.tell(trial, state=TrialState.FAIL)
            raise
        job_idx += len(returns)
        failures = []
        for trial, ret in zip(trials, returns, strict=True):
            state, error = tell(study, trial, ret)
            states[state] += 1
            if error is not None:
                log.warning(f"Trial {trial.number} failed: {reason(error)}")
                failures.append(error)
        if len(failures) / len(returns) > sweeper.max_failure_rate:
            log.error(
                f"{len(failures)} of the {len(returns)} trials of a batch failed, more than "
                f"hydra.sweeper.max_failure_rate={sweeper.max_failure_rate}: the search ends in the first failure."
            )
            raise failures[0]
        if job_idx < n_trials:  # the search goes on: where it stands
            log.info(progress(study, states, job_idx, n_trials))
    log.info(f"{job_idx} new trial{'s' * (job_idx != 1)}: {counted(states)}")
    write_results(study, Path(config.hydra.sweep.dir))
