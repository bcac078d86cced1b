"""Hydra's Optuna sweeper, which ends in one line and status 1 if a trial failed (``conf/hparams_search/optuna.yaml``).

The sweeper tells Optuna that a failed trial FAILed and goes on while failures stay within its
``max_failure_rate``, then ends as if all went well; and when no trial completed it cannot name a best
trial, and raises a bare error. Hydra only warns when a callback raises, so the summary callback cannot
end the command non-zero: this sweeper does, once the search is over and the summary written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from fashion_mnist_softmax.errors import JobFailed
from fashion_mnist_softmax.run.metrics import METRICS_FILE
from fashion_mnist_softmax.sweeps.summary import SUMMARY_MD, end_sweep, write_summary


class ContainedOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        sweep_dir = Path(self.sweeper.sweep_dir)
        try:
            result = super().sweep(arguments)
        except ValueError:  # Optuna's "no best trial", in its storage's words
            if list(sweep_dir.glob(f"*/{METRICS_FILE}")):
                raise
            write_summary(sweep_dir, self.sweeper.config, final=True)
            raise JobFailed(f"Every trial of the search failed: see {sweep_dir / SUMMARY_MD}.") from None
        end_sweep(sweep_dir, self.sweeper.config)  # JobFailed, in one line, if some trials failed
        return result
