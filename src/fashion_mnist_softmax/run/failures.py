"""How a run ends when it fails: a single run in one paragraph, a multirun's job within its job dir."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fashion_mnist_softmax.config.checks import check_config
from fashion_mnist_softmax.config.schema import APPS
from fashion_mnist_softmax.console import paragraph, refuse
from fashion_mnist_softmax.errors import JobFailed, UserError

T = TypeVar("T")
ERROR_FILE = "error.txt"  # a failed job's reason, in its job dir


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_failed(error: Exception, job_dir: str | Path, num: int, details: str = "") -> JobFailed:
    """Record a failed job of a multirun: its reason in ``<job dir>/error.txt`` and on stderr; the
    :class:`JobFailed` that Hydra's launchers and sweepers take as the job's failure."""
    reason = error.message if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    (Path(job_dir) / ERROR_FILE).write_text(reason + "\n" + details)
    print(f"\nJob {num} failed: " + paragraph(reason) + details, file=sys.stderr, flush=True)  # a bug's traceback
    return JobFailed(f"Job {num} failed: {reason}")


def friendly_errors(fn: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """A :class:`UserError` ends a single run in one paragraph (:func:`refuse`).

    A single run's config was checked before its run dir was made (:mod:`~fashion_mnist_softmax.run.run_dirs`);
    a multirun's job checks its own here, first. In a multirun, any failure of a job is contained in it: its
    reason goes to ``<job dir>/error.txt`` and to stderr, and the job raises :class:`JobFailed`, which Hydra's
    launchers and sweepers record as a failed job before they go on with the next ones.
    """

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> T:
        try:
            if in_multirun() and (app := HydraConfig.get().job.config_name) in APPS:
                check_config(cfg, app)
            return fn(cfg)
        except Exception as e:
            if not in_multirun():
                if isinstance(e, UserError):
                    refuse(e)
                raise
            details = "" if isinstance(e, UserError) else "\n\n" + traceback.format_exc()
            job = HydraConfig.get()
            raise job_failed(e, job.runtime.output_dir, job.job.num, details) from None

    return wrapper
