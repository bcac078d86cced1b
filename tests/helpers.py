"""What the project's tests share (the core's and the fused launcher's): tiny synthetic Fashion-MNIST IDX files,
Hydra composition and train.py runs, as functions and fixtures."""

from __future__ import annotations

import fcntl
import gzip
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

# one pytest-xdist worker per core: more torch threads, in a worker or in the runs it starts, only contend
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.version import VersionBase
from omegaconf import DictConfig, open_dict
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 512, 128


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format: magic 0x0803 for images, 0x0801 for labels."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_fashion_mnist(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> Path:
    """Write the four ``*-ubyte.gz`` files of a small, learnable Fashion-MNIST look-alike.

    Each class is a noisy copy of its own random template, so a linear model separates them.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.normal(0, 60, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return folder


@pytest.fixture(scope="session")
def fake_archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four synthetic ``.gz`` files, shared by the session: never modify it."""
    return make_fashion_mnist(tmp_path_factory.mktemp("archives"))


def tiny_overrides(archives: Path, data_root: Path, out_dir: Path) -> list[str]:
    """Overrides that point a run at the synthetic data, offline, with a quiet console (``callbacks=none``)."""
    return [
        f"data.root={data_root}",
        f"data.search_dirs=[{archives}]",
        "data.download=false",
        "data.expected_sizes=null",
        "data.val_size=64",
        "data.batch_size=32",
        f"paths.output_dir={out_dir}",
        "callbacks=none",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=4",
    ]


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """Compose ``conf/<config_name>.yaml`` with overrides, as Hydra would for train.py."""

    def _compose(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.root_dir = str(ROOT)
        return cfg

    return _compose


@pytest.fixture
def tiny_cfg(compose_cfg, fake_archives: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """A composed train config on synthetic data under ``tmp_path``; extra overrides come last."""

    def _cfg(*overrides: str) -> DictConfig:
        return compose_cfg([*tiny_overrides(fake_archives, tmp_path / "data", tmp_path / "run"), *overrides])

    return _cfg


# for run_script's env: what MLflow reads to decide whether it sends usage data, as a user's shell has none of it
# (no test runner, no CI, no choice of the user's)
NOT_A_TEST = {"PYTEST_CURRENT_TEST": None, "CI": None, "MLFLOW_DISABLE_TELEMETRY": None, "DO_NOT_TRACK": None}


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run a top-level entry point (train.py, eval.py, ...) in a real subprocess; a variable of ``env`` set to None
    is left out of its environment."""
    full_env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_terminal(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> tuple[int, str]:
    """Run an entry point as ``run_script`` does, with a terminal (a pseudo-terminal of 120 columns) for its
    output: its exit status and everything it wrote, carriage returns kept."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, str(ROOT / script), *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdin=child, stdout=child, stderr=child)
    os.close(child)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and select.select([main], [], [], deadline - time.monotonic())[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the process has ended and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(), output.decode(errors="replace")


def events_dir(run_dir: Path) -> Path:
    """Where a run's TensorBoard event files are: ``tensorboard/``, and in a sweep's job ``tensorboard/<overrides>``."""
    return next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent


def assert_no_empty_files(run_dir: Path) -> None:
    assert [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size == 0] == [], "an empty file"


@pytest.fixture
def tiny_train_args(fake_archives: Path, tmp_path: Path) -> list[str]:
    """train.py arguments for a synthetic-data run whose Hydra run dir is ``tmp_path/run``."""
    out = tmp_path / "run"
    return [*tiny_overrides(fake_archives, tmp_path / "data", out), f"hydra.run.dir={out}"]


needs_real_data = pytest.mark.skipif(
    not all((REAL_DATA / f"{n}.gz").is_file() for n in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")),
    reason="the real Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture
def app_without_version_base(hydra_restore_singletons: None) -> None:
    """Hydra's launcher suites run apps that name no version base, whose jobs run in their own dirs (Hydra 1.1's
    behaviour): the base is set to that, whatever a fixture of a wider scope composed with before."""
    VersionBase.instance().setbase(Version("1.1"))


@pytest.fixture(autouse=True)
def hydra_state_kept(hydra_restore_singletons: None) -> None:
    """Hydra's global state (its version base, its config store) as each test found it: a test that composes with
    ``version_base="1.3"`` would change where the next test's jobs run (Hydra's own launcher suites rely on it)."""
