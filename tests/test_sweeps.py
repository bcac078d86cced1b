"""Multirun summaries, the resumable Optuna search, launchers and the tuned config."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir

from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import METRICS_FILE, TEST_ACC, TEST_LOSS, VAL_ACC, VAL_ACC_BEST, read_metrics
from fashion_mnist_softmax.run.training import train
from fashion_mnist_softmax.sweep_summary import SEEDS_CSV, SUMMARY_CSV, SUMMARY_MD, read_jobs, write_summary

from helpers import ROOT
from sweep_runs import job_dirs, run_multirun


def _overrides(job_dir: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fake_job(sweep: Path, num: int, overrides: list[str], val: float, test: float) -> None:
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    (sweep / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = {VAL_ACC_BEST: val, TEST_ACC: test, TEST_LOSS: 1 - test}
    (sweep / str(num) / METRICS_FILE).write_text(json.dumps(metrics))


def test_summary_sorts_jobs_and_aggregates_seeds(tmp_path: Path) -> None:
    runs = [("0.1", "1", 0.80, 0.79), ("0.1", "2", 0.82, 0.80), ("0.3", "1", 0.85, 0.84), ("0.3", "2", 0.83, 0.81)]
    for num, (lr, seed, val, test) in enumerate(runs):
        _fake_job(tmp_path, num, ["impl=scratch", f"optim.lr={lr}", f"seed={seed}"], val, test)
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a job that crashed before writing metrics.json
    (tmp_path / "4" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["impl=scratch", "optim.lr=1", "seed=1"]))

    (tmp_path / "5" / ".hydra").mkdir(parents=True)  # a job that failed, with its reason
    (tmp_path / "5" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["impl=scratch", "optim.lr=9", "seed=2"]))
    (tmp_path / "5" / ERROR_FILE).write_text("Training stopped: the loss diverged.\n")

    write_summary(tmp_path, final=True)

    rows = _read_csv(tmp_path / SUMMARY_CSV)
    assert [r["job"] for r in rows] == ["2", "3", "1", "0", "4", "5"]
    assert list(rows[0]) == ["job", "optim.lr", "seed", "status", VAL_ACC_BEST, TEST_ACC, TEST_LOSS, "reason"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"] * 2
    assert rows[-1]["reason"] == "Training stopped: the loss diverged." and "killed" in rows[-2]["reason"]
    assert rows[-1][VAL_ACC_BEST] == ""
    seeds = _read_csv(tmp_path / SEEDS_CSV)
    assert [(r["optim.lr"], r["seeds"]) for r in seeds] == [("0.3", "2"), ("0.1", "2")]
    assert float(seeds[0][f"{TEST_ACC} mean"]) == pytest.approx(statistics.fmean([0.84, 0.81]))
    assert float(seeds[0][f"{TEST_ACC} std"]) == pytest.approx(statistics.stdev([0.84, 0.81]))
    md = (tmp_path / SUMMARY_MD).read_text()
    assert "`impl=scratch`" in md and "0.8250 ± 0.0212" in md and "failed" in md


def test_seeds_that_agree_have_a_std_of_zero(tmp_path: Path) -> None:
    for seed in ("1", "2", "3"):  # three equal values, whose float mean is not exactly theirs
        _fake_job(tmp_path, int(seed), ["optim.lr=0.1", f"seed={seed}"], 0.7, 0.7)
    _fake_job(tmp_path, 0, ["optim.lr=0.3", "seed=1"], 0.8, 0.8)
    write_summary(tmp_path, final=True)
    (agreed,) = [row for row in _read_csv(tmp_path / SEEDS_CSV) if row["seeds"] == "3"]
    assert float(agreed[f"{TEST_ACC} std"]) == 0.0


def test_summary_keeps_delete_overrides(tmp_path: Path) -> None:
    """A bare ``~key`` has no ``=`` (Hydra's sweepers write ``~key=null``): the summary is still written."""
    _fake_job(tmp_path, 0, ["~callbacks.progress_bar", "optim.lr=0.1"], 0.80, 0.79)
    _fake_job(tmp_path, 1, ["~callbacks.progress_bar", "optim.lr=0.3"], 0.85, 0.84)

    assert read_jobs(tmp_path)[0]["overrides"] == {"~callbacks.progress_bar": "", "optim.lr": "0.1"}
    write_summary(tmp_path, final=True)

    rows = _read_csv(tmp_path / SUMMARY_CSV)
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [("1", "0.3", "ok"), ("0", "0.1", "ok")]
    assert "Common overrides: `~callbacks.progress_bar`\n" in (tmp_path / SUMMARY_MD).read_text()


def test_seed_means_leave_out_what_no_validation_measured(tmp_path: Path) -> None:
    """``val/acc_best`` is null in metrics.json when validation was off (trainer.limit_val_batches=0)."""
    for num, seed in enumerate((1, 2)):
        _fake_job(tmp_path, num, ["test_ckpt=last", f"seed={seed}"], None, 0.80 + num / 100)
    write_summary(tmp_path, final=True)
    (row,) = _read_csv(tmp_path / SEEDS_CSV)
    assert row[f"{VAL_ACC_BEST} mean"] == "" and float(row[f"{TEST_ACC} mean"]) == pytest.approx(0.805)
    assert "0.8050 ± 0.0071" in (tmp_path / SUMMARY_MD).read_text()


def test_optuna_study_in_sqlite_resumes(tmp_path: Path, fake_archives: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}"]
    search.append("hydra.sweeper.study_name=resume")
    first, _ = run_multirun(tmp_path / "first", fake_archives, *search)
    second, result = run_multirun(tmp_path / "second", fake_archives, *search)
    for warning in ("FutureWarning", "DeprecationWarning", "ExperimentalWarning", "deprecated"):
        assert warning not in result.stdout + result.stderr, "Optuna warns in a resumed search"

    study = optuna.load_study(study_name="resume", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    jobs = job_dirs(first) + job_dirs(second)
    assert [t.value for t in study.trials] == [pytest.approx(read_metrics(j)[VAL_ACC_BEST]) for j in jobs]
    for trial, job in zip(study.trials, jobs, strict=True):
        assert read_metrics(job)["hparams"]["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
    lrs = [t.params["optim.lr"] for t in study.trials]
    assert len(set(lrs)) == 2, "the resumed study drew a new trial, not the first one again"
    assert [r["trial"] for r in _read_csv(second / SUMMARY_CSV)] == ["1"]
    assert [r["trial"] for r in _read_csv(first / SUMMARY_CSV)] == ["0"]
    # what the search draws is a column, though one trial drew one value of each: the search fixed none of them
    searched = {"optim.lr", "optim.weight_decay", "optim.momentum", "data.normalize"}
    assert searched <= set(_read_csv(second / SUMMARY_CSV)[0])
    assert not [key for key in searched if f"`{key}=" in (second / SUMMARY_MD).read_text()]
    for fixed in ("`trainer.max_epochs=1`", "`data.batch_size=32`"):  # in the search space, fixed on the command line
        assert fixed in (second / SUMMARY_MD).read_text()
    # without a pruner (hydra/sweeper/pruner=nop, the default) a job still reports its val/acc to its trial, at the
    # percent of its training done: all of it after its one epoch
    for trial, job in zip(study.trials, jobs, strict=True):
        assert trial.intermediate_values == {100: pytest.approx(read_metrics(job)["history"][0][VAL_ACC])}
    assert "1 new trial: 1 completed, 0 pruned, 0 failed" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(f"1 job (1 ok) in {second}; summary: {second / SUMMARY_MD}")
    assert not [p for p in second.rglob("*") if p.is_file() and p.stat().st_size == 0], "an empty file"


def test_submitit_slurm_launcher_composes_for_ddp() -> None:
    overrides = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    overrides += ["hydra.launcher.partition=gpu", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == ("gpu", 2, 4)
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_tuned_experiment_is_a_linear_model_that_learns(tiny_cfg, impl: str) -> None:
    cfg = tiny_cfg(f"impl={impl}", "experiment=tuned", "trainer.max_epochs=2")
    assert cfg.scheduler is not None and cfg.data.normalize
    metrics = train(cfg)
    assert metrics["impl"] == impl
    assert metrics[TEST_ACC] > 0.8


def test_a_study_that_optuna_2_stored_resumes_after_its_storage_is_upgraded(tmp_path: Path, fake_archives: Path):
    """``tests/fixtures/optuna-2.10-study.db``: two trials of ``hparams_search=optuna`` (study ``softmax``), stored by
    optuna 2.10.1 through hydra-optuna-sweeper 1.3.0, with ``optim.lr`` as a ``LogUniformDistribution``."""
    db = tmp_path / "optuna.db"
    shutil.copy(ROOT / "tests" / "fixtures" / "optuna-2.10-study.db", db)
    storage = f"sqlite:///{db}"
    upgrade = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "storage", "upgrade", "--storage", storage],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}"]
    run_multirun(tmp_path / "resumed", fake_archives, *search, "hydra.sweeper.study_name=softmax")
    trials = optuna.load_study(study_name="softmax", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[2].params["optim.lr"] not in (trials[0].params["optim.lr"], trials[1].params["optim.lr"])
    assert trials[2].distributions["optim.lr"] == optuna.distributions.FloatDistribution(0.02, 0.5, log=True)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a=choice(1,2)", optuna.distributions.CategoricalDistribution([1, 2])),
        ("a=range(1,10,4)", optuna.distributions.IntDistribution(1, 9, step=4)),
        ("a=range(0,1,0.3)", optuna.distributions.FloatDistribution(0.0, 0.9, step=0.3)),
        ("a=interval(0.1,0.5)", optuna.distributions.FloatDistribution(0.1, 0.5)),
        ("a=tag(log, interval(0.02, 0.5))", optuna.distributions.FloatDistribution(0.02, 0.5, log=True)),
        ("a=int(interval(5, 20))", optuna.distributions.IntDistribution(5, 20)),
        ("a=0.3", "0.3"),
    ],
)
def test_the_sweepers_search_space_syntax_gives_current_optuna_distributions(line, expected):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.hydra_optuna_pruning_sweeper._impl import create_optuna_distribution_from_override

    assert create_optuna_distribution_from_override(OverridesParser.create().parse_overrides([line])[0]) == expected
