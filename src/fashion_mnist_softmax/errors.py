"""Errors a user can fix, reported as one paragraph instead of a traceback; failed jobs that stay in their job."""

from __future__ import annotations

import functools
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

T = TypeVar("T")
EXIT_USER_ERROR = 2
ERROR_FILE = "error.txt"  # a failed job's reason, in its job dir


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data, a bad checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobFailed(CompactHydraException):
    """A job of a multirun failed. Hydra's launchers record it and go on; Hydra prints its message alone."""


def paragraph(message: str) -> str:
    """The message wrapped as one paragraph, paths kept whole so that they can be copied."""
    return textwrap.fill(message, width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def refuse(error: UserError) -> None:
    """End this process with the error's paragraph on stderr and ``EXIT_USER_ERROR``."""
    print("\nError: " + paragraph(error.message), file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def friendly_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """A :class:`UserError` ends a single run in one paragraph (:func:`refuse`).

    In a multirun, any failure of a job is contained in it: its reason goes to ``<job dir>/error.txt``
    and to stderr, and the job raises :class:`JobFailed`, which Hydra's launchers and sweepers record
    as a failed job before they go on with the next ones.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not in_multirun():
                if isinstance(e, UserError):
                    refuse(e)
                raise
            reason = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            details = "" if isinstance(e, UserError) else "\n\n" + traceback.format_exc()
            job = HydraConfig.get()
            (Path(job.runtime.output_dir) / ERROR_FILE).write_text(reason + "\n" + details)
            print(f"\nJob {job.job.num} failed: " + paragraph(reason), file=sys.stderr)
            raise JobFailed(f"Job {job.job.num} failed: {reason}") from None

    return wrapper
