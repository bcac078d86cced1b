"""Fault injection, sweeps: a job that fails stays in its job dir, the other jobs run, the summary says why.

Real ``train.py -m`` processes on the synthetic data, under each launcher and with Optuna on sqlite.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import yaml

from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import METRICS_FILE, TEST_ACC, VAL_ACC_BEST, read_metrics
from fashion_mnist_softmax.sweep_summary import SUMMARY_CSV, SUMMARY_MD

from helpers import run_script, tiny_overrides

LAUNCHERS = {  # the basic launcher sweeps both impls too: jobs 0 and 1 diverge
    "basic": ["impl=scratch,concise"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
}


def multirun(tmp_path: Path, archives: Path, *extra: str):
    tiny = [o for o in tiny_overrides(archives, tmp_path / "data", tmp_path) if not o.startswith("paths.output_dir=")]
    tiny = [o for o in tiny if not o.startswith("trainer.max_epochs=")]
    result = run_script("train.py", "-m", *tiny, f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=1", *extra)
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    return sweep, result


def _overrides(job_dir: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))


def read_summary(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / SUMMARY_CSV, newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def contained(result, sweep: Path, failed: list[str], ok: list[str], local: bool = True) -> None:
    """Exit status, console, job dirs and summary of a sweep whose ``failed`` jobs failed and ``ok`` jobs did not.
    A ``local`` job's console is the sweep's; submitit's jobs write theirs into their logs."""
    console = result.stdout + result.stderr
    assert result.returncode == 1, "a sweep with a failed job ends non-zero"
    for hydras in ("Traceback", "Error executing job", "HYDRA_FULL_ERROR"):  # the job said why, once
        assert hydras not in console, console[-4000:]
    assert f"summary: {sweep / SUMMARY_MD}" in console
    assert (
        result.stderr.splitlines()[-1]
        == f"{len(failed)} of {len(failed) + len(ok)} jobs failed: see {sweep / SUMMARY_MD}."
    )
    assert ("the loss diverged" in " ".join(result.stderr.split())) == local
    summary = read_summary(sweep)
    for job in failed:
        reason = (sweep / job / ERROR_FILE).read_text()
        assert reason.startswith("Training stopped: the loss diverged") and "\n\n" not in reason.strip()
        assert not (sweep / job / METRICS_FILE).exists()
        assert summary[job]["status"] == "failed" and summary[job]["reason"] == reason.strip()
    for job in ok:
        assert read_metrics(sweep / job)[TEST_ACC] > 0.5
        assert summary[job]["status"] == "ok" and not summary[job]["reason"]
    assert "failed" in (sweep / SUMMARY_MD).read_text()


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_diverging_job_fails_alone(tmp_path, fake_archives, launcher):
    sweep, result = multirun(tmp_path, fake_archives, "optim.lr=1e30,0.1", *LAUNCHERS[launcher])
    if launcher != "basic":
        contained(result, sweep, failed=["0"], ok=["1"], local=launcher != "submitit_local")
        return
    contained(result, sweep, failed=["0", "1"], ok=["2", "3"])
    rows = list(read_summary(sweep).values())
    assert [row["job"] for row in rows][2:] == ["0", "1"], "failed jobs last"
    assert float(rows[0][VAL_ACC_BEST]) >= float(rows[1][VAL_ACC_BEST]), "best val/acc_best first"
    for row in rows:
        overrides = yaml.safe_load((sweep / row["job"] / ".hydra" / "overrides.yaml").read_text())
        assert f"impl={row['impl']}" in overrides and f"optim.lr={row['optim.lr']}" in overrides
        if row["status"] == "ok":
            metrics = read_metrics(sweep / row["job"])
            assert metrics["impl"] == row["impl"] and metrics["hparams"]["optim"]["lr"] == float(row["optim.lr"])
            assert metrics[VAL_ACC_BEST] == pytest.approx(float(row[VAL_ACC_BEST]))


def test_an_optuna_search_goes_on_past_failed_trials_and_tells_optuna(tmp_path, fake_archives):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"]
    sweep, result = multirun(tmp_path, fake_archives, *search, "hydra.sweeper.study_name=s", "optim.lr=1e30")
    contained(result, sweep, failed=["0", "1"], ok=[])
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert [row["trial"] for row in read_summary(sweep).values()] == ["0", "1"]


def test_an_optuna_search_with_some_failed_trials_ends_in_status_1(tmp_path, fake_archives):
    """Some trials fail, not all: the search runs to its end, then exits 1 in one line that names the failures."""
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0"]
    fixed = ["optim.momentum=0.0", "optim.weight_decay=0.0", "data.normalize=false"]  # lr alone is searched
    sweep, result = multirun(tmp_path, fake_archives, *search, *fixed, "optim.lr=choice(1e30,0.1)")
    lr = {job: float(_overrides(sweep / job)["optim.lr"]) for job in ("0", "1")}
    failed, ok = [job for job in lr if lr[job] > 1], [job for job in lr if lr[job] < 1]
    assert len(failed) == len(ok) == 1, f"seed 0 no longer draws each lr once: {lr}"
    contained(result, sweep, failed=failed, ok=ok)
    assert "UserWarning" not in result.stderr, result.stderr[-4000:]
    assert [row["trial"] for row in read_summary(sweep).values()] == [*ok, *failed]
