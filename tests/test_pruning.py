"""Pruned Optuna searches (hydra/sweeper/pruner=median) on the synthetic data: the basic launcher with an in-memory
study, joblib workers and the fused launcher through sqlite, the same search under each."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from fashion_mnist_softmax.run.metrics import METRICS_FILE, STATUS, TEST_ACC, VAL_ACC, VAL_ACC_BEST, read_metrics
from fashion_mnist_softmax.sweep_summary import SUMMARY_MD

from helpers import run_script, tiny_overrides
from sweep_runs import job_dirs

EPOCHS, TRIALS = 3, 4
# a seeded random search over a wide range of learning rates: its first trial completes, and the median pruner
# then stops, after their first epoch, the trials whose val/acc falls below the median of the completed ones there
SEARCH = [
    "hparams_search=optuna",
    "hydra/sweeper/sampler=random",
    "hydra.sweeper.sampler.seed=0",
    "hydra/sweeper/pruner=median",
    "hydra.sweeper.pruner.n_startup_trials=1",
    f"hydra.sweeper.n_trials={TRIALS}",
    "optim.lr=tag(log,interval(1e-6,1.0))",
    "optim.weight_decay=0",
    "optim.momentum=0",
    "data.normalize=false",
    f"trainer.max_epochs={EPOCHS}",
]
LAUNCHERS = {
    "basic": [],  # the study in memory: its jobs run in the sweeper's process
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "hydra.sweeper.n_jobs=1"],  # a worker process
    "fused": ["hydra/launcher=fused", "hydra.sweeper.n_jobs=2"],  # batches of 2 trials as fused populations
}


def common(fake_archives: Path, tmp: Path) -> list[str]:
    return [o for o in tiny_overrides(fake_archives, tmp / "data", tmp) if not o.startswith(("paths.", "trainer.max"))]


@pytest.fixture(scope="module")
def searches(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The search under each launcher: its sweep dir, the train.py result, and the study (None: in memory)."""
    found = {}
    for name, launcher in LAUNCHERS.items():
        tmp = tmp_path_factory.mktemp(name)
        storage = None if name == "basic" else f"sqlite:///{tmp / 'optuna.db'}"
        where = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=pruned"] if storage else []
        args = ["-m", *common(fake_archives, tmp), f"paths.log_dir={tmp / 'logs'}", *SEARCH, *launcher, *where]
        result = run_script("train.py", *args)
        (sweep_dir,) = (tmp / "logs" / "train" / "multiruns").iterdir()
        study = optuna.load_study(study_name="pruned", storage=storage) if storage else None
        found[name] = (sweep_dir, result, study)
    return found


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_pruned_trials_stop_early_and_the_search_ends_in_status_0(searches, launcher):
    sweep_dir, result, study = searches[launcher]
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    metrics = [read_metrics(job) for job in jobs]
    pruned = [m for m in metrics if m[STATUS] == "pruned"]
    assert pruned and len(pruned) < TRIALS
    for m in metrics:
        epochs = [row["epoch"] for row in m["history"]]
        if m[STATUS] == "pruned":  # stopped after an epoch, untested, its checkpoints kept
            assert (
                len(epochs) < EPOCHS
                and m[TEST_ACC] is None
                and m[VAL_ACC_BEST] == max(r[VAL_ACC] for r in m["history"])
            )
        else:
            assert m[STATUS] == "completed" and epochs == list(range(1, EPOCHS + 1)) and m[TEST_ACC] is not None
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / METRICS_FILE).is_file()
    completed = TRIALS - len(pruned)
    assert f"{TRIALS} new trials: {completed} completed, {len(pruned)} pruned, 0 failed" in result.stdout
    summary = (sweep_dir / SUMMARY_MD).read_text()
    assert f"{TRIALS} jobs, {completed} ok, {len(pruned)} pruned" in summary
    assert summary.count("| pruned |") == len(pruned)
    for m in pruned:
        assert f"pruned after epoch {len(m['history'])}" in summary
        if launcher == "basic":  # each job says so, in the sweep's console
            assert f"pruned by its search after epoch {len(m['history'])}: not tested" in result.stdout
    if launcher == "fused":  # a line for each epoch of each batch's group, over the jobs that trained it
        lines = re.findall(r"fused epoch (\d+): (\d+) of 2 jobs, loss \S+, val acc (\S+)-(\S+)", result.stdout)
        batches = [metrics[i : i + 2] for i in range(0, TRIALS, 2)]
        expected = [(e, batch) for batch in batches for e in range(1, max(len(m["history"]) for m in batch) + 1)]
        assert len(lines) == len(expected), result.stdout[-3000:]
        for (epoch, n, low, high), (e, batch) in zip(lines, expected, strict=True):
            accs = [round(m["history"][e - 1][VAL_ACC], 3) for m in batch if len(m["history"]) >= e]
            assert (int(epoch), int(n), float(low), float(high)) == (e, len(accs), min(accs), max(accs))
    if study is not None:  # each trial told as its job ended, with the val/acc it reported at each epoch
        states = [t.state for t in study.trials]
        assert states == [
            optuna.trial.TrialState.PRUNED if m[STATUS] == "pruned" else optuna.trial.TrialState.COMPLETE
            for m in metrics
        ]
        for trial, m in zip(study.trials, metrics, strict=True):
            # at the percent of training done: 33, 67, 100 for epochs 1 to 3
            expected = {round(100 * r["epoch"] / EPOCHS): r[VAL_ACC] for r in m["history"]}
            assert trial.intermediate_values == pytest.approx(expected)


@pytest.mark.parametrize("launcher", ["joblib", "fused"])
def test_every_launcher_prunes_as_the_basic_launcher_does(searches, launcher):
    """The same trials, pruned at the same epochs; the fused members that train on after their batch's pruned ones
    left end where their lone runs end (loss 1e-4, accuracy 0.002)."""
    basic = [read_metrics(job) for job in job_dirs(searches["basic"][0])]
    other = [read_metrics(job) for job in job_dirs(searches[launcher][0])]
    for a, b in zip(basic, other, strict=True):
        assert a["hparams"]["optim"]["lr"] == b["hparams"]["optim"]["lr"]
        assert a[STATUS] == b[STATUS] and len(a["history"]) == len(b["history"])
        for row_a, row_b in zip(a["history"], b["history"], strict=True):
            assert row_a["train/loss"] == pytest.approx(row_b["train/loss"], abs=1e-4)
            assert row_a[VAL_ACC] == pytest.approx(row_b[VAL_ACC], abs=0.002)
        if a[TEST_ACC] is not None:
            assert a[TEST_ACC] == pytest.approx(b[TEST_ACC], abs=0.002)


@pytest.mark.parametrize(
    "launcher", [["hydra/launcher=joblib"], ["hydra/launcher=fused", "hydra.launcher.executor=local"]]
)
def test_a_pruned_search_in_memory_with_jobs_in_other_processes_is_refused(fake_archives, tmp_path, launcher):
    args = ["-m", *common(fake_archives, tmp_path), f"paths.log_dir={tmp_path / 'logs'}", *SEARCH]
    result = run_script("train.py", *args, *launcher)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs a storage" in result.stderr and "hydra.sweeper.storage=sqlite:///logs/optuna.db" in result.stderr
    assert not list((tmp_path / "logs").glob("train/multiruns/*/0"))
