"""Run ``train.py -m`` on the synthetic data in a tmp folder, and read back what the sweep left."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import run_script, tiny_overrides


def run_multirun(tmp_path: Path, archives: Path, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    """``train.py -m`` with one epoch and logs under ``tmp_path/logs``; returns the one sweep dir it made."""
    tiny = tiny_overrides(archives, tmp_path / "data", tmp_path / "unused")
    tiny = [o for o in tiny if not o.startswith(("paths.output_dir=", "trainer.max_epochs="))]
    result = run_script("train.py", "-m", *tiny, f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=1", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0], result


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name))
