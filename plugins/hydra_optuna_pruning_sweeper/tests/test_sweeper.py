"""What this plugin adds to, or does differently from, Hydra's own Optuna sweeper: every sampler of current Optuna
with its constructor's arguments, resumed studies that draw new trials, grids that include a range's end, failed
jobs and non-numeric returns that end as the official sweeper ends them, and pruning in a plain loop."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.test_utils.test_utils import TSweepRunner
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.hydra_optuna_pruning_sweeper import _impl, trial
from hydra_plugins.hydra_optuna_pruning_sweeper.config import GROUPS

PLUGIN = Path(__file__).resolve().parents[1]
CONF = PLUGIN / "tests" / "conf"


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    """``script -m`` in a process of its own, as a user runs it, from the plugin's root."""
    command = [sys.executable, script, "-m", *overrides]
    return subprocess.run(command, cwd=PLUGIN, capture_output=True, text=True, timeout=300)


def stored(tmp_path: Path, name: str = "s") -> list[str]:
    return [f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", f"hydra.sweeper.study_name={name}"]


def trials(tmp_path: Path, name: str = "s") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials


@pytest.mark.parametrize(("group", "name"), [(g, n) for g, (_, names) in GROUPS.items() for n in names])
def test_each_sampler_and_pruner_takes_its_constructors_arguments_with_optunas_defaults(group, name):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("app", [f"{group}={name}"], return_hydra_config=True)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    module, classes = GROUPS[group]
    signature = inspect.signature(getattr(importlib.import_module(module), classes[name])).parameters
    assert node._target_ == f"{module}.{classes[name]}"
    assert set(node) - {"_target_"} == set(signature) - {"search_space"}  # a grid's values come from params
    for key, parameter in signature.items():
        if key in node:
            required = parameter.default is parameter.empty
            assert OmegaConf.is_missing(node, key) if required else node[key] == parameter.default


def sweep_app(runner: TSweepRunner, tmp_path: Path, task: Any, *overrides: str) -> Any:
    """A search of tests/conf/app.yaml in this process, its study in tmp_path/optuna.db; its results file."""
    args = [*stored(tmp_path), "hydra/launcher=basic", "hydra.sweeper.n_trials=4", *overrides]
    results = tmp_path / "sweep" / "optimization_results.yaml"
    with runner(str(PLUGIN / "tests" / "app.py"), None, task, "conf", "app", args, results.parent):
        return OmegaConf.load(results) if results.exists() else None  # the runner removes its sweep dir


OPTIONAL = {"cmaes": "cmaes", "qmc": "scipy"}  # the packages, optional to Optuna, that these samplers draw with


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsgaii", "qmc"])
def test_every_sampler_searches(hydra_sweep_runner, tmp_path, sampler):
    """Where the package that a sampler draws with is not installed, the search ends in Optuna's ImportError."""
    search = [f"hydra/sweeper/sampler={sampler}", "+y=interval(-1.0, 1.0)", "hydra.sweeper.sampler.seed=1"]
    if (needs := OPTIONAL.get(sampler)) and importlib.util.find_spec(needs) is None:
        with pytest.raises(ImportError, match=needs):
            sweep_app(hydra_sweep_runner, tmp_path, lambda cfg: cfg.x, *search)
        states = [t.state for t in trials(tmp_path)]  # its first trial drawn at random, then the sampler's own
        assert states[-1] == TrialState.FAIL and TrialState.RUNNING not in states
        return
    results = sweep_app(hydra_sweep_runner, tmp_path, lambda cfg: cfg.x, *search)
    found = trials(tmp_path)
    assert [t.state for t in found] == [TrialState.COMPLETE] * 4 and len({t.params["x"] for t in found}) == 4
    assert results.best_value == min(t.value for t in found) == results.best_params.x


def test_a_grid_goes_through_every_value_of_its_ranges_ends_included(hydra_sweep_runner, tmp_path):
    overrides = ["hydra/sweeper/sampler=grid", "+y=range(1,3)", "x=choice(0.5,1.5)", "hydra.sweeper.n_trials=10"]
    sweep_app(hydra_sweep_runner, tmp_path, lambda cfg: cfg.x + cfg.y, *overrides)
    found = trials(tmp_path)
    assert [t.state for t in found] == [TrialState.COMPLETE] * 6, "the grid's 6 points, once each"
    assert sorted((t.params["x"], t.params["+y"]) for t in found) == [(x, y) for x in (0.5, 1.5) for y in (1, 2, 3)]


def test_a_resumed_study_draws_new_trials(hydra_sweep_runner, tmp_path):
    """Its sampler is seeded with its seed plus the trials it holds: the same command draws new trials."""
    search = ["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0"]
    for _ in range(2):
        sweep_app(hydra_sweep_runner, tmp_path, lambda cfg: cfg.x, *search)
    assert len({t.params["x"] for t in trials(tmp_path)}) == 8


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["hydra.sweeper.direction=up"], "hydra.sweeper.direction=up is not valid"),
        (["hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate=2.0 is not valid"),
        (["hydra/sweeper/sampler=grid"], "sampler=grid goes through the values of choice and range, and x is an"),
        (["hydra/sweeper/pruner=percentile"], "hydra.sweeper.pruner.percentile has no value"),
    ],
)
def test_settings_that_no_search_runs_with_are_refused_before_any_job(hydra_sweep_runner, tmp_path, overrides, refused):
    jobs = []
    with pytest.raises(CompactHydraException, match=re.escape(refused)):
        sweep_app(hydra_sweep_runner, tmp_path, jobs.append, *overrides)
    assert jobs == []


@pytest.mark.parametrize(
    ("storage", "refused"),
    [
        ("sqlite://x.db", "is not a valid sqlite URL: a sqlite file is sqlite:///relative/path.db (three slashes)"),
        ("sqlite:///{tmp}/missing/x.db", "names a sqlite file in {tmp}/missing, a folder that does not exist."),
        ("postgresql://u@localhost/db", "needs its database's driver, the Python module psycopg, which is not"),
        ("sqlite:///{plugin}/README.md", "cannot be opened as an Optuna storage: file is not a database."),
        ("nodb://x", "names a database that SQLAlchemy knows no dialect of."),
    ],
)
def test_a_storage_that_cannot_be_opened_is_refused_in_one_line_before_any_job(
    hydra_sweep_runner, tmp_path, storage, refused
):
    storage, jobs = storage.format(tmp=tmp_path, plugin=PLUGIN), []
    with pytest.raises(CompactHydraException) as e:
        sweep_app(hydra_sweep_runner, tmp_path, jobs.append, f"hydra.sweeper.storage={storage}")
    said = str(e.value)
    assert said.startswith(f"hydra.sweeper.storage={storage} " + refused.format(tmp=tmp_path)) and "\n" not in said
    assert jobs == []


def configure_x(cfg: Any, trial: optuna.trial.Trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)


def test_custom_search_space_that_suggests_a_fixed_parameter_fails_its_trial(hydra_sweep_runner, tmp_path):
    custom = f"hydra.sweeper.custom_search_space={__name__}.configure_x"
    with pytest.raises(ValueError, match=r"custom_search_space suggests \['x'\], which the overrides fix"):
        sweep_app(hydra_sweep_runner, tmp_path, lambda cfg: cfg.x, custom, "x=0.5")
    assert [t.state for t in trials(tmp_path)] == [TrialState.FAIL], "never RUNNING"


def test_a_failed_jobs_exception_is_read_without_hydras_error_line(capfd):
    """Hydra prints 'Error executing job' when it hands over a failed job's exception; the sweeper reads it as a
    completed job's return value (a JobReturn dataclass: its status, then its value), and says why itself."""
    error = RuntimeError("the job failed")
    ret = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert _impl.outcome(ret) is error and ret.status == JobStatus.FAILED
    assert capfd.readouterr().err == ""


def run_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run("tests/app.py", *stored(tmp_path), f"hydra.sweep.dir={tmp_path}", *overrides)


WORD = "ValueError: The job returned 'abc', and hydra/sweeper=optuna takes 1 number, one for each"
RAISED = "RuntimeError: the job failed at x="


def test_failed_trials_are_logged_and_the_search_goes_on(tmp_path):
    """A job that raised, or returned a word or two numbers for one direction: each trial FAILs with its reason
    logged, and at max_failure_rate=1.0 the search goes on, and ends with status 0."""
    grid = ["hydra/sweeper/sampler=grid", "x=0.5", "fail=choice(true,false)", "returns=choice(abc,1,[1,2])"]
    result = run_app(tmp_path, *grid, "hydra.sweeper.max_failure_rate=1.0")
    assert result.returncode == 0, result.stderr
    assert sorted(t.state for t in trials(tmp_path)) == [TrialState.COMPLETE] + [TrialState.FAIL] * 5
    assert result.stdout.count(RAISED) == 3 and result.stdout.count(WORD) == 1
    assert "The number of the values 2 did not match the number of the objectives 1" in result.stdout
    assert "6 new trials: 1 completed, 0 pruned, 5 failed" in result.stdout
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").best_value == 1


@pytest.mark.parametrize(("failure", "reason"), [("fail=true", RAISED), ("returns=abc", WORD)])
def test_a_batch_that_fails_above_max_failure_rate_ends_the_search_in_its_first_failure(tmp_path, failure, reason):
    """Status 1, with the first failure as Hydra reports an error, after the batch's trials were told FAIL."""
    result = run_app(tmp_path, failure, "hydra.sweeper.max_failure_rate=0.5", "hydra.sweeper.n_jobs=2")
    assert result.returncode == 1 and reason in result.stderr
    assert [t.state for t in trials(tmp_path)] == [TrialState.FAIL] * 2, "the first batch, none left RUNNING"
    assert result.stdout.count(reason) == 2 and not (tmp_path / "optimization_results.yaml").exists()


def test_the_plain_loop_example_prunes(tmp_path):
    """As it comes: the basic launcher runs each job in the sweeper's process, which holds the study in memory."""
    result = run("example/pruning.py", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    counts = re.search(r"12 new trials: (\d+) completed, (\d+) pruned, 0 failed", result.stdout)
    assert counts and int(counts[2]) >= 1, result.stdout[-2000:]
    assert "Error executing job" not in result.stderr and "Traceback" not in result.stderr


def test_jobs_in_processes_of_their_own_prune_through_the_studys_storage(tmp_path):
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=6"]
    result = run("example/pruning.py", *joblib, *stored(tmp_path, "pruning"), f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    found = trials(tmp_path, "pruning")
    pruned = [t for t in found if t.state == TrialState.PRUNED]
    assert pruned and {t.state for t in found} == {TrialState.PRUNED, TrialState.COMPLETE}
    for t in found:  # each job's reports, up to the step where it was pruned; and where its files are
        steps = len(t.intermediate_values)
        assert steps < 20 if t.state == TrialState.PRUNED else steps == 20
        assert (
            t.user_attrs["job_dir"] == str(tmp_path / str(t.number)) and (tmp_path / str(t.number) / ".hydra").is_dir()
        )
    assert f"6 new trials: {6 - len(pruned)} completed, {len(pruned)} pruned, 0 failed" in result.stdout
    # after each batch but the last: where the search stands, and the best value so far (minimized)
    lines = re.findall(
        r"(\d) of 6 new trials ended: (\d) completed, (\d) pruned, 0 failed(?:; best value (\S+) \(trial (\d)\))?",
        result.stdout,
    )
    assert [int(told) for told, *_ in lines] == [2, 4], result.stdout[-2000:]
    for told, completed, n_pruned, value, number in lines:
        done = [t for t in found if t.number < int(told)]
        assert int(completed) + int(n_pruned) == int(told) == len(done)
        best = min((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
        assert (int(number), float(value)) == (best.number, pytest.approx(best.value, rel=1e-5)) if best else not value


def test_a_job_outside_a_search_has_no_trial(monkeypatch):
    monkeypatch.delenv("HYDRA_OPTUNA_TRIAL", raising=False)
    assert trial() is None
