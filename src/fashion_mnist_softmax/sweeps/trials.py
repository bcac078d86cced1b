"""What an Optuna search's jobs hand its sweeper, without Lightning: a pruned job's value, and the studies that
jobs running in the sweeper's process reach through it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fashion_mnist_softmax.run.metrics import PRUNED, STATUS, VAL_ACC_BEST

STORAGES: dict[str, Any] = {}  # the storage of each study that a sweeper runs in this process, by study name


class Pruned(float):
    """What a pruned job returns: its ``val/acc_best``, marked for the sweeper to tell Optuna the trial was pruned."""


def objective(metrics: Mapping[str, Any]) -> float:
    """A job's return value for its sweeper: ``val/acc_best``, as :class:`Pruned` if its trial was pruned."""
    value = metrics[VAL_ACC_BEST]
    return Pruned(value) if metrics.get(STATUS) == PRUNED else value
