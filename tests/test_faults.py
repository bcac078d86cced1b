"""Fault injection, single runs: every mistake refused in one paragraph before any work, and no run harms another.

Each case is a real train.py / predict.py process next to a finished reference run in the same log folder.
Each asserts the exit status, one paragraph and no traceback, that no epoch ran where the mistake could be
found first, that the reference run's files are byte for byte as they were, and that nothing was lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import METRICS_FILE, TEST_ACC, VAL_ACC_BEST, read_metrics
from fashion_mnist_softmax.run.prediction import predict

from helpers import ROOT, assert_no_empty_files, run_script, tiny_overrides


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def world(fake_archives: Path) -> Iterator[Path]:
    """A folder that every user may enter: some cases run as an unprivileged user, for whom permissions count."""
    folder = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))
    folder.chmod(0o777)
    shutil.copytree(fake_archives, folder / "archives")
    (folder / "archives").chmod(0o755)  # a copy of a folder of pytest's, which only its owner may enter
    yield folder
    for path in folder.rglob("*"):  # let the clean-up into read-only folders
        if path.is_dir():
            path.chmod(0o777)
    shutil.rmtree(folder, ignore_errors=True)


def args(world: Path, *extra: str, log_dir: Path | None = None) -> list[str]:
    """train.py overrides on the synthetic data, runs under ``<log_dir>/train/runs/<time>``."""
    tiny = tiny_overrides(world / "archives", world / "data", world / "unused")
    tiny = [o for o in tiny if not o.startswith("paths.output_dir=")]
    return [*tiny, f"paths.log_dir={log_dir or world / 'logs'}", *extra]


@pytest.fixture(scope="module")
def reference(world: Path) -> Path:
    """A finished two-epoch run in ``<world>/logs``; every case below must leave it as it is."""
    result = run_script("train.py", *args(world), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (world / "logs" / "train" / "runs").iterdir()
    return run


def run_dirs(world: Path) -> set[Path]:
    return set((world / "logs" / "train" / "runs").iterdir())


def refused(result: subprocess.CompletedProcess, *phrases: str) -> str:
    """The one paragraph of a refused run, after checking the exit status, the traceback and the epochs."""
    console = result.stdout + result.stderr
    assert result.returncode == 2, console[-3000:]
    assert "Traceback" not in console and "epoch 1," not in console, console[-3000:]
    error = result.stderr[result.stderr.index("Error: ") :]
    assert "\n\n" not in error.strip(), error  # one paragraph
    for phrase in phrases:
        assert phrase in " ".join(error.split()), error
    return error


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("test_ckpt=bestt", "test_ckpt='bestt' is not valid: it must be best (by val/acc), last, or the path"),
        ("seed=abc", "seed='abc' is not valid: it must be a whole number"),
        ("data.normalize=maybe", "data.normalize='maybe' is not valid: it must be true or false"),
        ("data.batch_size=0", "data.batch_size=0 is not valid: it must be a whole number of at least 1"),
        ("optim.momentum=1.5", "optim.momentum=1.5 is not valid"),
        ("impl=scratch optim=adam", "impl=scratch trains with its hand-written SGD"),
        ("trainer.devices=64", "trainer.devices=64 asks for 64 processes on the CPU"),
    ],
)
def test_a_config_mistake_is_refused_before_anything_is_written(world, reference, override, phrase):
    before, dirs = fingerprint(reference), run_dirs(world)
    refused(run_script("train.py", *args(world, *override.split())), phrase)
    assert run_dirs(world) == dirs, "a refused run left a run dir behind"
    assert fingerprint(reference) == before


def test_training_into_another_runs_dir_is_refused_and_rewrites_nothing(world, reference):
    before = fingerprint(reference)
    result = run_script("train.py", *args(world, f"hydra.run.dir={reference}"))
    refused(result, f"The run directory {reference} already holds another run", "ckpt_path=")
    assert fingerprint(reference) == before, "the other run's files, .hydra/ included, must stay as they were"
    tested = ["ckpt_path=" + str(reference / "checkpoints" / "last.ckpt"), f"hydra.run.dir={reference}"]
    data = [o for o in args(world) if o.startswith("data.")]
    said = refused(run_script("eval.py", *data, *tested), f"The run directory {reference} already holds")
    assert "resume" not in said, "eval.py resumes nothing"
    assert fingerprint(reference) == before


def unprivileged(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """``script`` as a user for whom file permissions count (root writes into read-only folders)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": "/tmp", "MPLCONFIGDIR": "/tmp"}
    command = [*prefix, sys.executable, str(ROOT / script), *arguments]
    return subprocess.run(command, cwd="/tmp", env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("place", ["log", "data", "run"])
def test_a_read_only_folder_is_refused_before_anything_is_written(world, reference, place):
    read_only = world / f"read-only-{place}"
    read_only.mkdir(mode=0o555, exist_ok=True)
    read_only.chmod(0o555)
    given = {  # the other places are new folders in <world>, where anyone may write
        "log": [f"paths.log_dir={read_only / 'logs'}", f"data.root={world / 'data-of-nobody'}"],
        "data": [f"data.root={read_only / 'data'}"],
        "run": [f"hydra.run.dir={read_only / 'run'}", f"data.root={world / 'data-of-nobody'}"],
    }[place]
    before, dirs = fingerprint(reference), run_dirs(world)
    result = unprivileged("train.py", *args(world, *given))
    key = {"log": "paths.log_dir", "data": "data.root", "run": "hydra.run.dir"}[place]
    refused(result, "cannot be written to", str(read_only), f"Give a writable place on the command line: {key}=<dir>.")
    assert not any(read_only.iterdir()) and run_dirs(world) == dirs
    assert fingerprint(reference) == before


def test_a_search_dir_this_user_may_not_enter_holds_no_data_for_the_run(world):
    private = world / "private"
    shutil.copytree(world / "archives", private / "archives")
    private.chmod(0o700)
    given = [f"data.search_dirs=[{private / 'archives'}]", f"data.root={world / 'data-of-nobody'}"]
    result = unprivileged("train.py", *args(world, *given, log_dir=world / "logs-of-nobody"))
    refused(result, "Fashion-MNIST is not available", "and the download is off (data.download=false)")


def test_a_folder_on_no_disk_is_refused_as_no_place_to_write(world):
    """/proc takes no files, though its permissions say root may write there: no full disk, a mistake (status 2)."""
    result = run_script("train.py", *args(world, log_dir=Path("/proc/logs")))
    refused(result, "The log folder (paths.log_dir) /proc/logs cannot be written to", "paths.log_dir=<dir>.")


def test_four_runs_started_together_each_get_a_run_dir_of_their_own(world, fake_archives):
    log_dir = world / "together"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *args(world, f"seed={seed}", "trainer.max_epochs=1", log_dir=log_dir),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2, 3, 4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    runs = sorted((log_dir / "train" / "runs").iterdir())
    assert len(runs) == 4
    assert sorted(read_metrics(run)["seed"] for run in runs) == [1, 2, 3, 4]
    printed = "".join(out for out, _ in outputs)
    for run in runs:
        metrics = read_metrics(run)
        assert f"run dir {run}" in printed
        assert len(metrics["history"]) == 1 and metrics[TEST_ACC] > 0
        assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
        assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2  # its own best and last, nobody else's
        writers = {path.name.split(".")[-2] for path in (run / "tensorboard").glob("events.out.tfevents.*")}
        assert len(writers) == 1, "event files of one process only"
        assert (run / ".hydra" / "overrides.yaml").read_text().count(f"seed={metrics['seed']}") == 1


@pytest.mark.parametrize("max_epochs", [2, 3])
def test_resuming_a_finished_run_into_a_new_dir(world, reference, max_epochs):
    before, dirs = fingerprint(reference), run_dirs(world)
    last = reference / "checkpoints" / "last.ckpt"
    result = run_script("train.py", *args(world, f"trainer.max_epochs={max_epochs}", f"ckpt_path={last}"))
    console = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in console, console[-3000:]
    assert "The dirpath has changed" not in console  # Lightning's word for a new dir: docs/errors.md says what it means
    (new,) = run_dirs(world) - dirs
    metrics, old = read_metrics(new), read_metrics(reference)
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, max_epochs + 1))
    if max_epochs == 2:
        assert "Nothing left to train" in " ".join(result.stdout.split()) and "epoch 3," not in console
        assert "checkpoints:" not in console and not (new / "checkpoints").exists()  # it names no empty place
        assert metrics["test_ckpt"] == os.path.abspath(last)
        assert metrics[TEST_ACC] == old[TEST_ACC] and metrics[VAL_ACC_BEST] == old[VAL_ACC_BEST]
    else:
        assert "epoch 3," in console and "Nothing left to train" not in console
    assert fingerprint(reference) == before


@pytest.fixture(scope="module")
def photos(world: Path) -> Path:
    folder = world / "photos"
    folder.mkdir(exist_ok=True)
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (40, 60), "white").save(folder / name)
    return folder


@pytest.mark.parametrize(
    ("given", "sources"),
    [
        ("images=a.jpg", ["a.jpg"]),
        ("images={photos}/a.jpg", ["a.jpg"]),
        ("images=[a.jpg,{photos}]", ["a.jpg", "a.jpg", "b.png"]),
        ("indices=5", ["test[5]"]),
        ("indices=[1,2]", ["test[1]", "test[2]"]),
    ],
)
def test_predict_takes_plain_values(world, reference, photos, compose_cfg, monkeypatch, given, sources):
    out = world / "predict" / re.sub(r"\W", "_", given)
    data = [o for o in args(world) if o.startswith("data.")]
    overrides = [f"ckpt_path={reference / 'checkpoints' / 'last.ckpt'}", given.format(photos=photos), *data]
    monkeypatch.chdir(photos)  # relative image paths are read from the working directory
    if given == "images=a.jpg":  # the command line itself, once; the other forms through Hydra's same parser
        env = {**os.environ, "PROJECT_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(ROOT / "predict.py"), *overrides, f"hydra.run.dir={out}"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:  # Hydra would have made the run dir
        out.mkdir(parents=True)
        predict(compose_cfg([*overrides, f"paths.output_dir={out}"], config_name="predict"))
    rows = json.loads((out / "predictions.json").read_text())
    assert [Path(row["source"]).name for row in rows] == sources


@pytest.mark.parametrize("problem", ["missing", "other impl"])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_anything_is_written(world, reference, problem):
    ckpt = reference / "checkpoints" / ("nowhere.ckpt" if problem == "missing" else "last.ckpt")
    before, dirs = fingerprint(reference), run_dirs(world)
    result = run_script("train.py", *args(world, "impl=scratch", f"ckpt_path={ckpt}"))  # the reference is concise
    phrase = f"No checkpoint at {ckpt}" if problem == "missing" else "holds a concise model, but impl=scratch"
    refused(result, phrase)
    assert run_dirs(world) == dirs and fingerprint(reference) == before


@pytest.mark.parametrize(
    ("given", "phrase"),
    [
        ("indices=abc", "indices='abc' is not valid: it must be a test-image number"),
        ("indices=[10000]", "indices=[10000] are out of range: the test set has 10000 images, numbered 0 to 9999"),
        ("indices=[3,-1]", "indices=[-1] are out of range"),
        ("images=[{fake}]", "cannot be read as an image (UnidentifiedImageError"),
    ],
)
def test_predict_with_bad_indices_or_images_is_refused_before_its_run_dir(world, reference, given, phrase):
    log_dir = world / "predict-refused"
    fake = world / "not-an-image.png"
    fake.write_text("text with an image suffix")
    ckpt = reference / "checkpoints" / "last.ckpt"
    result = run_script("predict.py", f"ckpt_path={ckpt}", given.format(fake=fake), f"paths.log_dir={log_dir}")
    refused(result, phrase)
    assert "Warning" not in result.stderr and not log_dir.exists(), result.stderr


def test_a_run_that_fails_once_started_says_why_in_its_run_dir(world):
    """A diverged loss stops the run after its dir was made: the dir says why (error.txt), as a sweep's job dir does."""
    run = world / "diverged"
    result = run_script("train.py", *args(world, "optim.lr=1e30", "trainer.max_epochs=1", f"hydra.run.dir={run}"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (run / ERROR_FILE).read_text().startswith("Training stopped: the loss diverged")
    assert not (run / METRICS_FILE).exists()


def test_a_test_checkpoint_of_the_other_impl_is_refused_before_anything_is_written(world, reference):
    ckpt = reference / "checkpoints" / "last.ckpt"
    before, dirs = fingerprint(reference), run_dirs(world)
    result = run_script("train.py", *args(world, "impl=scratch", f"test_ckpt={ckpt}"))  # the reference is concise
    refused(result, "holds a concise model, but impl=scratch was asked for. Use impl=concise to test it")
    assert run_dirs(world) == dirs and fingerprint(reference) == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A disk of 1.5 MB (a tmpfs), which a run fills."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_disk_that_fills_during_a_run_ends_it_in_one_paragraph_with_its_checkpoints_whole(world, small_disk):
    """TensorBoard's writer thread, the figures and the checkpoints all meet the full disk: the run says it once,
    with how to resume, and exits with status 1; every checkpoint in its folder loads."""
    result = run_script("train.py", *args(world, "callbacks=default", "trainer.max_epochs=200", log_dir=small_disk))
    console = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in console, console[-3000:]
    error = " ".join(result.stderr[result.stderr.index("Error: ") :].split())
    assert error.startswith("Error: The disk is full:") and "once there is room, resume with: " in error, error
    (run,) = (small_disk / "train" / "runs").iterdir()
    assert f"hydra.run.dir={run} ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in error
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 14 * (saved["epoch"] + 1) and "epoch 1," in result.stdout
    for checkpoint in (run / "checkpoints").iterdir():  # no temp file left, and no half of one
        assert checkpoint.suffix == ".ckpt" and torch.load(checkpoint, weights_only=True)["state_dict"]
    assert_no_empty_files(run)


def test_a_disk_that_fills_during_a_fused_sweep_fails_its_jobs_in_one_paragraph(world, small_disk):
    """Each member says it, without the resume command: a member's checkpoints hold the weights only."""
    sweep = ["hydra/launcher=fused", "optim.lr=0.1,0.2", "callbacks=default", "trainer.max_epochs=200"]
    result = run_script("train.py", "-m", *args(world, *sweep, log_dir=small_disk))
    console = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in console, console[-3000:]
    said = " ".join(result.stderr.split())
    for num in (0, 1):
        assert f"Job {num} failed: The disk is full:" in said and f"{num}). Free some space" in said, said
    assert "resume with" not in said and "Fix it on the command line" not in said and "OSError" not in said


def test_a_disk_already_full_is_refused_before_the_run_writes_anything(world, small_disk):
    (small_disk / "other").write_bytes(bytes(1300 * 1024))
    result = run_script("train.py", *args(world, log_dir=small_disk))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"The disk of the log folder (paths.log_dir) {small_disk} is full" in " ".join(result.stderr.split())
    assert sorted(p.name for p in small_disk.iterdir()) == ["other"]
