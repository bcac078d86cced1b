"""The project's exceptions: a mistake the user can fix, a full disk, and a failed job of a multirun."""

from __future__ import annotations

from hydra.errors import CompactHydraException

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data, a bad checkpoint."""

    exit_status = EXIT_USER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DiskFull(UserError):
    """The disk filled up: no mistake of the config's (exit status 1, as for a run that stopped), and a run can go on
    once there is room."""

    exit_status = 1


class JobFailed(CompactHydraException):
    """A job of a multirun failed. Hydra's launchers record it and go on; Hydra prints its message alone."""
