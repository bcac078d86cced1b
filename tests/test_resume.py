"""Stop a run at any point and resume it in its own dir: real train.py processes, killed or signalled.

- SIGKILL in the middle of epoch 2: resuming from the epoch-end ``last.ckpt`` gives the uninterrupted
  run's history to 1e-6.
- SIGINT or SIGTERM in the middle of epoch 2: the run saves ``last.ckpt`` between two steps and stops;
  resuming goes on with the next batch, and ends with the uninterrupted run's weights and global step.
"""

from __future__ import annotations

import csv
import math
import os
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fashion_mnist_softmax.console import python_command
from fashion_mnist_softmax.run.metrics import (
    COMPLETED,
    EPOCH_TIME,
    INTERRUPTED,
    METRICS_FILE,
    STATUS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    TRAIN_LR,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_LOSS,
    read_metrics,
)
from fashion_mnist_softmax.run.run_dirs import hydra_value
from fashion_mnist_softmax.run.training import train
from fashion_mnist_softmax.sweep_summary import SUMMARY_CSV, SUMMARY_MD

from helpers import ROOT, run_script, tiny_overrides

# batch size 1: 448 steps an epoch, long enough to land a signal in the middle of the second one
STEPS_PER_EPOCH, EPOCHS = 448, 2


def train_args(archives: Path, root: Path, name: str, *extra: str) -> list[str]:
    run = root / name
    slow = ["data.batch_size=1", f"trainer.max_epochs={EPOCHS}", "optim.lr=0.001"]  # far from converged in 3 epochs
    return [*tiny_overrides(archives, root / "data", run), f"hydra.run.dir={run}", *slow, *extra]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start train.py; stdout is a pipe to watch, stderr goes to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 2 busy cores: threads only contend
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read stdout until a line contains ``text``; return everything read."""
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"train.py never printed {text!r}; stdout so far:\n{seen}")
        if select.select([proc.stdout], [], [], 1.0)[0]:
            seen += proc.stdout.readline()
    return seen


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, 1, 2, 143, -signal.SIGKILL), log.read_text()[-3000:]
    return proc.returncode, out


def stop_in_epoch_2(proc: subprocess.Popen, sig: int, run: Path, times: int = 1) -> tuple[int, str]:
    """Send ``sig`` to the run in ``run`` early in its epoch 2, ``times`` times 0.3 s apart (Ctrl-C pressed again
    while the run writes its last files); its exit status and its stdout."""
    seen = wait_for_line(proc, "epoch 1,")
    last, deadline = run / "checkpoints" / "last.ckpt", time.monotonic() + 60
    while not last.exists() and time.monotonic() < deadline:  # the epoch line comes before epoch 1's checkpoint
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(sig)
    for _ in range(times - 1):
        time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(sig)
    rc, out = finish(proc, run.parent / f"{run.name}.log")
    assert "epoch 2," not in seen + out, "the run finished epoch 2 before the signal"
    return rc, seen + out


def resume(archives: Path, root: Path, name: str) -> None:
    last = root / name / "checkpoints" / "last.ckpt"
    resumed = start(train_args(archives, root, name, f"ckpt_path={last}"), root / f"{name}-resumed.log")
    assert finish(resumed, root / f"{name}-resumed.log")[0] == 0


def comparable(metrics: dict) -> dict:
    """A run's results without wall-clock times and paths."""
    history = [{k: v for k, v in row.items() if k != EPOCH_TIME} for row in metrics["history"]]
    return {"history": history, **{k: metrics[k] for k in (TEST_ACC, TEST_LOSS, VAL_ACC_BEST)}}


def final_state(run: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"]


@pytest.fixture(scope="module")
def runs(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One command run five times at once: two uninterrupted; one SIGKILLed, one SIGINTed (three times, as an
    impatient Ctrl-C) and one SIGTERMed in the middle of epoch 2, each then resumed in its own dir."""
    root = tmp_path_factory.mktemp("resume")
    signals = {"killed": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
    procs = {name: start(train_args(fake_archives, root, name), root / f"{name}.log") for name in ("a", "b", *signals)}

    def stop(name: str) -> tuple[int, str]:
        return stop_in_epoch_2(procs[name], signals[name], root / name, times=3 if name == "sigint" else 1)

    with ThreadPoolExecutor(len(signals)) as pool:  # each signal lands as soon as its run starts epoch 2
        stopped = dict(zip(signals, pool.map(stop, signals), strict=True))
    for name in ("a", "b"):
        assert finish(procs[name], root / f"{name}.log")[0] == 0
    assert stopped["killed"][0] == -signal.SIGKILL and not (root / "killed" / METRICS_FILE).exists()
    assert (
        torch.load(root / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH
    )
    for name, status in (("sigint", 1), ("sigterm", 128 + signal.SIGTERM)):
        last = root / name / "checkpoints" / "last.ckpt"
        assert stopped[name][0] == status and f"of {EPOCHS} epochs: saved {last}. Resume with:" in stopped[name][1]
        assert "Received SIG" not in stopped[name][1]  # Lightning's line: the run says how it stopped
        step = torch.load(last, weights_only=True)["global_step"]
        assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH, "saved by the signal, in the middle of epoch 2"
        assert list((root / name / "checkpoints").glob("epoch000-*.ckpt")), "the best checkpoint of epoch 1 is gone"
        events = EventAccumulator(str(root / name / "tensorboard"))
        events.Reload()
        assert len(events.Scalars(VAL_ACC)) == 1, "epoch 1 reached the event file"
    with ThreadPoolExecutor(len(signals)) as pool:
        list(pool.map(lambda name: resume(fake_archives, root, name), signals))
    return {name: root / name for name in ("a", "b", *signals)}


def test_two_identical_runs_give_identical_histories(runs):
    a, b = read_metrics(runs["a"]), read_metrics(runs["b"])
    assert [row["epoch"] for row in a["history"]] == list(range(1, EPOCHS + 1))
    assert comparable(a) == comparable(b)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(runs):
    a, resumed = comparable(read_metrics(runs["a"])), comparable(read_metrics(runs["killed"]))
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, EPOCHS + 1))
    for row_a, row_r in zip(a["history"], resumed["history"], strict=True):
        assert row_r == pytest.approx(row_a, abs=1e-6)
    for key in (TEST_ACC, TEST_LOSS, VAL_ACC_BEST):
        assert resumed[key] == pytest.approx(a[key], abs=1e-6)


@pytest.mark.parametrize("name", ["sigint", "sigterm"])
def test_a_signal_mid_epoch_then_resume_ends_where_the_uninterrupted_run_ends(runs, name):
    weights, step = final_state(runs[name])
    reference, reference_step = final_state(runs["a"])
    assert step == reference_step == EPOCHS * STEPS_PER_EPOCH
    for key, value in reference.items():  # the same steps on the same batches, in the same order
        assert torch.equal(weights[key], value), key

    a, resumed = read_metrics(runs["a"]), read_metrics(runs[name])
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, EPOCHS + 1))
    for row_a, row_r in zip(a["history"], resumed["history"], strict=True):
        assert all(math.isfinite(row_r[k]) for k in (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC))
        assert row_r[TRAIN_LR] == row_a[TRAIN_LR], "the epoch resumed in its middle has its learning rate too"
        assert 0 < row_r[EPOCH_TIME] < 60
        # epoch 2's training metrics cover the batches after the resume; everything else is the same
        same = (VAL_LOSS, VAL_ACC) if row_r["epoch"] == 2 else (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC)
        for key in same:
            assert row_r[key] == pytest.approx(row_a[key], abs=1e-6), (row_r["epoch"], key)
    assert resumed[TEST_ACC] == pytest.approx(a[TEST_ACC], abs=1e-6)


def test_a_sigint_in_an_epochs_last_step_stops_after_its_end_and_resumes_it_whole(fake_archives, tmp_path):
    """A checkpoint taken after an epoch's last step would resume into a finished epoch, whose validation and
    history row Lightning then skips: the run stops once the epoch has ended, its checkpoints written. (Resuming
    from an epoch's end gives the uninterrupted run's history: the SIGKILL test above.)"""
    run = tmp_path / "run"
    base = [*tiny_overrides(fake_archives, tmp_path / "data", run), f"hydra.run.dir={run}"]  # 2 epochs of 14 steps
    signal_at = ["+callbacks.signal._target_=last_batch_signal.SignalAtLastBatch", "+callbacks.signal.epoch=1"]
    tests = {"PYTHONPATH": str(ROOT / "tests")}
    no_venv = {**tests, "PATH": "/usr/bin:/bin"}  # a shell without the venv on its PATH, which make train runs from
    interrupted = run_script("train.py", *base, *signal_at, env=no_venv)
    last = run / "checkpoints" / "last.ckpt"
    assert interrupted.returncode == 1, interrupted.stderr[-2000:]
    said = interrupted.stdout.splitlines()
    command = said[said.index(f"Interrupted after 1 of 2 epochs: saved {last}. Resume with:") + 1]
    assert "KeyboardInterrupt" not in interrupted.stdout + interrupted.stderr
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 14 and len(saved["callbacks"]["EpochSummary"]["history"]) == 1
    stopped = read_metrics(run)  # written when it stopped
    assert stopped[STATUS] == INTERRUPTED and [row["epoch"] for row in stopped["history"]] == [1]

    in_that_shell = {**os.environ, **no_venv}
    resumed = subprocess.run(["bash", "-c", command], cwd=ROOT, env=in_that_shell, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # pasted as printed in that shell, it finishes the run
    assert "Checkpoint directory" not in resumed.stdout + resumed.stderr
    finished = read_metrics(run)
    history = finished["history"]
    assert finished[STATUS] == COMPLETED and finished[TEST_ACC] is not None
    assert torch.load(last, weights_only=True)["global_step"] == 2 * 14
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:  # epoch 1 kept its validation and its row
        assert all(math.isfinite(row[k]) for k in (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC)), row


def test_last_ckpt_ends_every_epoch_when_validation_runs_every_other_one(tiny_cfg, tmp_path):
    """Lightning saves at validation only, unless told to save at every epoch's end."""
    train(tiny_cfg("trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    history = last["callbacks"]["EpochSummary"]["history"]
    assert last["epoch"] == 2 and [row["epoch"] for row in history] == [1, 2, 3]
    # a validation's metrics stay in Lightning's callback_metrics until the next one: epoch 3 must not show epoch 2's
    assert [VAL_ACC in row for row in history] == [False, True, False]
    assert math.isnan(read_metrics(tmp_path / "run")["history"][0].get(VAL_ACC, math.nan))


@pytest.mark.parametrize("path", ["/tmp/run", "/tmp/a run", "/tmp/über", "/tmp/it's", "/tmp/a=b,c[d]"])
def test_a_path_in_a_resume_command_reads_back_as_itself(path):
    (override,) = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_value(path)}"])
    assert override.value() == path


def test_a_printed_command_names_the_python_that_runs_it_unless_the_shells_python_is_that_one(monkeypatch, tmp_path):
    script = ROOT / "train.py"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")  # an activated venv
    assert python_command(script, "a b") == "python train.py 'a b'"
    monkeypatch.setenv("PATH", str(tmp_path))  # a shell without it or any python: make train, .venv/bin/python ...
    here = Path(sys.executable)
    python = os.path.relpath(here) if here.absolute().is_relative_to(ROOT) else str(here)
    assert python_command(script, "a b") == f"{python} train.py 'a b'"


def test_a_sigint_in_a_sweep_stops_it_and_its_summary_says_where(fake_archives, tmp_path):
    """The interrupted job keeps its finished epochs and its resume command; the sweep's summary lists it as
    interrupted, and the job that did not start as not started. Once resumed, the job is ok in the summary."""
    sweep = tmp_path / "sweep"
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    signal_at = ["+callbacks.signal._target_=last_batch_signal.SignalAtLastBatch", "+callbacks.signal.epoch=1"]
    args = ["-m", *common, *signal_at, f"hydra.sweep.dir={sweep}", "seed=1,2"]
    result = run_script("train.py", *args, env={"PYTHONPATH": str(ROOT / "tests")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    said = result.stdout.splitlines()
    stop_line = f"Interrupted after 1 of 2 epochs: saved {sweep / '0' / 'checkpoints' / 'last.ckpt'}. Resume with:"
    command = said[said.index(stop_line) + 1].strip()
    assert said[-1] == f"The sweep stopped at job 0: see {sweep / SUMMARY_MD}"
    stopped = read_metrics(sweep / "0")
    assert stopped[STATUS] == INTERRUPTED and stopped["resume"] == command  # kept for a console that is gone
    rows = list(csv.DictReader((sweep / SUMMARY_CSV).open()))
    assert [(r["job"], r["seed"], r[STATUS]) for r in rows] == [("0", "1", INTERRUPTED), ("1", "2", "not started")]
    assert rows[0]["reason"] == "interrupted after epoch 1" and not (sweep / "1").exists()
    assert "2 jobs, 1 interrupted, 1 not started" in (sweep / SUMMARY_MD).read_text()

    tests = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    resumed = subprocess.run(["bash", "-c", command], cwd=ROOT, env=tests, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = list(csv.DictReader((sweep / SUMMARY_CSV).open()))
    assert [(r["job"], r[STATUS]) for r in rows] == [("0", "ok"), ("1", "not started")]


def test_a_sigint_in_an_optuna_search_says_to_run_the_search_again_which_continues_its_study(fake_archives, tmp_path):
    """A search's job cannot be resumed on its own (a search runs with -m) and its trial ends as failed: the run
    says to run the search's command again, and that command continues the stored study."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["-m", *common, f"paths.log_dir={tmp_path / 'logs'}", "hparams_search=optuna"]
    search += [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=int", "hydra.sweeper.n_trials=1"]
    signal_at = ["+callbacks.signal._target_=last_batch_signal.SignalAtLastBatch", "+callbacks.signal.epoch=1"]
    stopped = run_script("train.py", *search, *signal_at, env={"PYTHONPATH": str(ROOT / "tests")})
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    said = " ".join(stopped.stdout.split())
    assert "Resume with" not in said
    assert f"Its trial is recorded as failed in study int ({storage}). To go on with the search, run its" in said

    again = run_script("train.py", *search)  # the same command, without the test's signal
    assert again.returncode == 0, again.stderr[-2000:]
    trials = optuna.load_study(study_name="int", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
