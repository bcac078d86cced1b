"""The end of a run's loggers."""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.loggers import Logger, WandbLogger


def finish(loggers: Sequence[Logger], status: str) -> None:
    """Each logger writes what it holds (``status``: "success" or "failed"), and a W&B run ends: its process would
    end it at exit, but one process may hold several runs (a fused sweep's members, a notebook's runs)."""
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if status == "success" else 1)
