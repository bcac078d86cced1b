"""Hydra's Optuna sweeper, which ends in one line when every trial failed (``conf/hparams_search/optuna.yaml``).

The sweeper tells Optuna that a failed trial FAILed and goes on while failures stay within its
``max_failure_rate``; but when no trial completed it cannot name a best trial, and raises a bare error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from fashion_mnist_softmax.errors import JobFailed
from fashion_mnist_softmax.metrics import METRICS_FILE


class ContainedOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        try:
            return super().sweep(arguments)
        except ValueError:  # Optuna's "no best trial", in its storage's words
            sweep_dir = Path(self.sweeper.sweep_dir)
            if list(sweep_dir.glob(f"*/{METRICS_FILE}")):
                raise
            raise JobFailed(f"Every trial of the search failed: see {sweep_dir / 'summary.md'}.") from None
