"""Resume after SIGKILL, stop cleanly on SIGINT/SIGTERM, and identical reruns: real train.py processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fashion_mnist_softmax import metrics as m

from conftest import ROOT, tiny_overrides

# batch size 2 and one minibatch per training step: 224 training steps an epoch, long enough to land a
# signal in the middle of the second one
STEPS_PER_EPOCH = 224


def train_args(archives: Path, root: Path, name: str, *extra: str) -> list[str]:
    run = root / name
    slow = ["data.batch_size=2", "data.batches_per_step=1"]
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


def comparable(metrics: dict) -> dict:
    """A run's results without wall-clock times and paths."""
    history = [{k: v for k, v in row.items() if k != m.EPOCH_TIME} for row in metrics["history"]]
    return {"history": history, **{k: metrics[k] for k in (m.TEST_ACC, m.TEST_LOSS, m.VAL_ACC_BEST)}}


@pytest.fixture(scope="module")
def runs(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runs of one command, at once: two uninterrupted, one SIGKILLed in epoch 2 and resumed."""
    root = tmp_path_factory.mktemp("resume")
    procs = {name: start(train_args(fake_archives, root, name), root / f"{name}.log") for name in ("a", "b", "killed")}
    seen = wait_for_line(procs["killed"], "epoch 1,")
    time.sleep(0.1)
    procs["killed"].send_signal(signal.SIGKILL)
    rc, out = finish(procs["killed"], root / "killed.log")
    assert rc == -signal.SIGKILL
    assert "epoch 2," not in seen + out, "the run finished epoch 2 before the kill"
    assert not (root / "killed" / m.METRICS_FILE).exists()
    for name in ("a", "b"):
        assert finish(procs[name], root / f"{name}.log")[0] == 0

    last = root / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == STEPS_PER_EPOCH
    resumed = start(train_args(fake_archives, root, "killed", f"ckpt_path={last}"), root / "resumed.log")
    assert finish(resumed, root / "resumed.log")[0] == 0
    return {name: root / name for name in ("a", "b", "killed")}


def test_two_identical_runs_give_identical_histories(runs):
    a, b = m.read_metrics(runs["a"]), m.read_metrics(runs["b"])
    assert [row["epoch"] for row in a["history"]] == [1, 2]
    assert comparable(a) == comparable(b)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(runs):
    a, resumed = comparable(m.read_metrics(runs["a"])), comparable(m.read_metrics(runs["killed"]))
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    for row_a, row_r in zip(a["history"], resumed["history"], strict=True):
        assert row_r == pytest.approx(row_a, abs=1e-6)
    for key in (m.TEST_ACC, m.TEST_LOSS, m.VAL_ACC_BEST):
        assert resumed[key] == pytest.approx(a[key], abs=1e-6)


@pytest.fixture(scope="module")
def interrupted(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """SIGINT and SIGTERM, each sent to a run in the middle of its second epoch."""
    root = tmp_path_factory.mktemp("interrupt")
    sigs = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
    # one run at a time, each signalled as soon as it prints its first epoch line; many epochs, so that
    # no run can finish before its signal lands
    result = {}
    for name, sig in sigs.items():
        proc = start(train_args(fake_archives, root, name, "trainer.max_epochs=50"), root / f"{name}.log")
        seen = wait_for_line(proc, "epoch 1,")
        time.sleep(0.1)
        proc.send_signal(sig)
        rc, out = finish(proc, root / f"{name}.log")
        result[name] = (rc, seen + out, root / name)
    return result


@pytest.mark.parametrize(("name", "status"), [("sigint", 1), ("sigterm", 128 + signal.SIGTERM)])
def test_signal_saves_last_ckpt_flushes_logs_and_exits_nonzero(interrupted, name, status):
    rc, out, run = interrupted[name]
    assert rc == status
    last = run / "checkpoints" / "last.ckpt"
    assert f"Interrupted: saved {last}" in out
    step = torch.load(last, weights_only=True)["global_step"]
    assert step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0  # saved by the signal, in the middle of an epoch
    assert list((run / "checkpoints").glob("epoch000-*.ckpt")), "the best checkpoint of epoch 1 is gone"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(events.Scalars(m.VAL_ACC)) >= 1  # epoch 1 reached the event file
