"""The project's exceptions: a mistake the user can fix, and a failed job of a multirun."""

from __future__ import annotations

from hydra.errors import CompactHydraException

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data, a bad checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobFailed(CompactHydraException):
    """A job of a multirun failed. Hydra's launchers record it and go on; Hydra prints its message alone."""
