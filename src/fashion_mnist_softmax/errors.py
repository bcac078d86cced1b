"""Errors a user can fix, reported as one paragraph instead of a traceback."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data, a bad checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def friendly_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Print a :class:`UserError` as one wrapped paragraph on stderr and exit with ``EXIT_USER_ERROR``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            paragraph = textwrap.fill(
                e.message, width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
            )  # paths stay whole, to be copied
            print("\nError: " + paragraph, file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
