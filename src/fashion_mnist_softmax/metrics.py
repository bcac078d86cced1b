"""The names of the logged metrics, in one place, and the run's ``metrics.json``."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

TRAIN_LOSS, TRAIN_ACC = "train/loss", "train/acc"
VAL_LOSS, VAL_ACC, VAL_ACC_BEST = "val/loss", "val/acc", "val/acc_best"
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
EPOCH_TIME = "time_s"
TRAIN_LOSS_STEP = "train/loss_step"
TRAIN_EPOCH_TIME, TRAIN_THROUGHPUT = "train/epoch_time_s", "train/images_per_s"
HP_VAL_ACC_BEST, HP_TEST_ACC, HP_TEST_LOSS = "hp/val_acc_best", "hp/test_acc", "hp/test_loss"
# the figures: TensorBoard image tags and PNG names under <run_dir>/figures/
SAMPLES, PREDICTIONS, WEIGHTS, CONFUSION, CURVES = "samples", "predictions", "weights", "confusion", "curves"
METRICS_FILE = "metrics.json"


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named file next to ``path``, to be renamed over it: its descriptor and its path.

    Made with the mode ``open()`` gives, the umask applied (``tempfile.mkstemp`` makes owner-only files).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of a run directory."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
