"""The names of the logged scalars and figures, in one place, and the run's ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAIN_LOSS, TRAIN_ACC = "train/loss", "train/acc"
VAL_LOSS, VAL_ACC, VAL_ACC_BEST = "val/loss", "val/acc", "val/acc_best"
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
EPOCH_TIME = "time_s"
TRAIN_LOSS_STEP, TRAIN_LR = "train/loss_step", "train/lr"
TRAIN_EPOCH_TIME, TRAIN_THROUGHPUT = "train/epoch_time_s", "train/images_per_s"
HP_VAL_ACC_BEST, HP_TEST_ACC, HP_TEST_LOSS = "hp/val_acc_best", "hp/test_acc", "hp/test_loss"
# the figures: TensorBoard image tags and PNG names under <run_dir>/figures/
SAMPLES, PREDICTIONS, WEIGHTS, CONFUSION, CURVES = "samples", "predictions", "weights", "confusion", "curves"
METRICS_FILE = "metrics.json"
# metrics.json's status: a run that trained its epochs and was tested, a search's job its trial's pruner stopped,
# or a run stopped by Ctrl-C or SIGTERM, which its last.ckpt resumes
STATUS, COMPLETED, PRUNED, INTERRUPTED = "status", "completed", "pruned", "interrupted"


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of a run directory."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
