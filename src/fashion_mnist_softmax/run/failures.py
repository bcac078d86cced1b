"""How a run ends when it fails: a single run in one paragraph, a multirun's job within its job dir."""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ConfigTypeError, ValidationError

from fashion_mnist_softmax.config.checks import APPS, check_config, expected_of, invalid, unknown_key
from fashion_mnist_softmax.console import paragraph, refuse
from fashion_mnist_softmax.errors import EXIT_USER_ERROR, DiskFull, JobFailed, UserError
from fashion_mnist_softmax.files import write_atomic
from fashion_mnist_softmax.run.commands import resume_command, search_goes_on
from fashion_mnist_softmax.run.run_dirs import in_multirun, unclaim_empty_dirs

T = TypeVar("T")
ERROR_FILE = "error.txt"  # a failed job's reason, in its job dir


def is_pruned(error: BaseException) -> bool:
    """Whether ``error`` is ``optuna.TrialPruned``, a pruned job's word to its search's sweeper, not a failure
    (where Optuna is not loaded, no job was pruned)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def record_failure(error: Exception, run_dir: str | Path, details: str = "") -> str:
    """Write why a run failed into ``<run dir>/error.txt``, so that its dir says so later (a sweep's summary reads
    it), whole or not at all (its disk may be full); return the reason."""
    reason = error.message if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    with contextlib.suppress(OSError):
        write_atomic(Path(run_dir) / ERROR_FILE, lambda f: f.write((reason + "\n" + details).encode()))
    return reason


def disk_full(error: BaseException, run_dir: Path, resumable: bool = True) -> DiskFull | None:
    """The full disk behind ``error`` (ENOSPC, or a quota's EDQUOT), in one paragraph: what could not be written,
    and how the run goes on once there is room (from its last checkpoint, where it is ``resumable``); None for any
    other error."""
    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"  # written whole or not at all: the last one is whole
    go_on = search_goes_on() or ""
    if not go_on and resumable and last.is_file():
        go_on = f"Its last checkpoint is whole; once there is room, resume with: {resume_command(run_dir, last)}"
    return DiskFull(
        f"The disk is full: {cause.filename or 'a file of the run'} could not be written "
        f"({shutil.disk_usage(run_dir).free // 1024} kB free on the disk of {run_dir}). Free some space, or write "
        f"runs elsewhere with paths.log_dir=<dir>. {go_on}".strip()
    )


def job_failed(error: Exception, job_dir: str | Path, num: int, details: str = "", resumable: bool = True) -> JobFailed:
    """Record a failed job of a multirun: its reason (a full disk's paragraph, :func:`disk_full`) in
    ``<job dir>/error.txt`` and on stderr; the :class:`JobFailed` that Hydra's launchers and sweepers take as the
    job's failure."""
    reason = record_failure(disk_full(error, Path(job_dir), resumable) or error, job_dir, details)
    print(f"\nJob {num} failed: " + paragraph(reason) + details, file=sys.stderr, flush=True)  # a bug's traceback
    return JobFailed(f"Job {num} failed: {reason}")


def composition_error(e: CompactHydraException) -> UserError:
    """What Hydra could not make of the command line, as the project says a mistake: a key that the config lacks
    (with the closest one), a choice that its group lacks (with the choices), an override that does not parse, or
    Hydra's own words."""
    cause = e.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and isinstance(cause.parent_node, DictConfig):
        return unknown_key(cause.full_key, cause.parent_node)
    if isinstance(cause, ValidationError) and isinstance(cause.parent_node, DictConfig):  # of the wrong type
        return invalid(cause.full_key, cause.value, expected_of(cause.parent_node, cause.full_key.rpartition(".")[2]))
    deleted, node = f"~{getattr(cause, 'full_key', '')}", getattr(cause, "parent_node", None)
    removed = deleted in {arg.split("=")[0] for arg in sys.argv[1:]}  # as typed: a key its target's schema keeps
    if isinstance(cause, ConfigTypeError) and isinstance(node, DictConfig) and "_target_" in node and removed:
        return UserError(
            f"{deleted} cannot remove {deleted[1:]}: every argument of {node._target_} is a key, "
            f"with its default. Set it instead ({deleted[1:]}=<value>). Fix it on the command line."
        )
    if isinstance(e, MissingConfigException) and e.options and e.missing_cfg_file:
        group, _, choice = e.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(choice, e.options, n=1)
        hint = f"did you mean {group}={close[0]}?" if close else f"the choices are {', '.join(e.options)}."
        return UserError(f"{group}={choice} is not a choice of {group}: {hint} Fix it on the command line.")
    if isinstance(e, OverrideParseException):
        said = f"{e.override} does not parse: {_hydras_words(e.message)}"
    else:
        said = _hydras_words(str(e))
        if cause is not None and str(cause) not in str(e) and not isinstance(cause, ImportError):
            said += f": {_hydras_words(str(cause))}"
    # a module that is missing (a database's driver for a search's storage) is installed, as the message says
    hint = "" if isinstance(cause, ImportError) else " Fix it on the command line."
    return UserError(f"{said}{'' if said.endswith(('.', '?')) else '.'}{hint}")


def _hydras_words(text: str) -> str:
    """Hydra's or OmegaConf's message on one line, without what does not apply here: their lines on the node, the
    advice to add the key with a + (it is not a key of this config) and to set HYDRA_FULL_ERROR."""
    lines = [
        line
        for line in text.splitlines()
        if not line.strip().startswith(("To append", "full_key", "object_type", "reference_type"))
    ]
    said = " ".join(" ".join(lines).split())
    return said.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "").rstrip(".")


FULL_ERROR = "HYDRA_FULL_ERROR"
# Hydra's flags that each choose what a command does, by every name they go by; Hydra takes one at a time
MODES = {"-m": "-m", "--multirun": "-m", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info", "--info": "--info"}
MODES |= {"-r": "--run", "--run": "--run", "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}


def one_mode(argv: list[str]) -> None:
    """Refuse a command line with more than one of Hydra's modes, which Hydra reports in a traceback."""
    modes = list(dict.fromkeys(MODES[arg.split("=")[0]] for arg in argv if arg.split("=")[0] in MODES))
    if len(modes) > 1:
        raise UserError(
            f"{' and '.join(modes)} cannot be given together: a command does one of -m (a sweep), --cfg (print the "
            f"config), --info, --run and --shell-completion. To print the config of one job of a sweep, give that "
            f"job's values without -m, e.g. --cfg job optim.lr=0.1."
        )


_BEFORE: dict[str, str | None] = {}  # its value before command_line_errors set it, until the task starts


def command_line_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Around ``hydra.main``: a command line that Hydra cannot make a config of ends in one paragraph
    (:func:`composition_error`), as every other mistake does.

    Hydra hands such an error to its caller only under ``HYDRA_FULL_ERROR=1``. It is set here while Hydra composes,
    and put back as the user left it when the task starts (:func:`friendly_errors`): what fails in a run, Hydra
    reports as it always does. A user who sets it to 1 gets Hydra's own report of everything.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            one_mode(sys.argv[1:])
        except UserError as e:
            refuse(e)
        if os.environ.get(FULL_ERROR) == "1":
            return main(*args, **kwargs)
        _BEFORE[FULL_ERROR] = os.environ.get(FULL_ERROR)
        os.environ[FULL_ERROR] = "1"
        try:
            return main(*args, **kwargs)
        except JobFailed as e:  # a job that failed where it could not say so in its dir (a full disk): as Hydra says it
            print(e, file=sys.stderr)
            sys.exit(1)
        except CompactHydraException as e:  # raised before any task started: a task's errors go to Hydra
            unclaim_empty_dirs()  # e.g. a sweeper that refused its settings: the sweep dir holds nothing
            refuse(composition_error(e))
        except SystemExit as e:  # a refusal: a sweep's job that could not be composed, say
            if e.code == EXIT_USER_ERROR:
                unclaim_empty_dirs()
            raise
        finally:
            _hand_back()

    return wrapper


def _hand_back() -> None:
    """``HYDRA_FULL_ERROR`` as the user left it, where :func:`command_line_errors` set it."""
    if FULL_ERROR in _BEFORE:
        if (before := _BEFORE.pop(FULL_ERROR)) is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = before


def friendly_errors(fn: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """A :class:`UserError` ends a single run in one paragraph (:func:`refuse`).

    A single run's config was checked before its run dir was made (:mod:`~fashion_mnist_softmax.run.run_dirs`);
    a multirun's job checks its own here, first. A run that fails writes its reason into its dir's ``error.txt``
    (a bug's with its traceback). In a multirun, any failure of a job is contained in it: its
    reason goes to ``<job dir>/error.txt`` and to stderr, and the job raises :class:`JobFailed`, which Hydra's
    launchers and sweepers record as a failed job before they go on with the next ones.
    """

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> T:
        _hand_back()  # from here on, Hydra reports what fails as it always does
        try:
            if in_multirun() and (app := HydraConfig.get().job.config_name) in APPS:
                check_config(cfg, app)
            return fn(cfg)
        except SystemExit:  # the process ends (Ctrl-C, SIGTERM, a refusal): Ctrl-C again would cut its last writes
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise
        except Exception as e:
            if is_pruned(e):  # its search stopped it: not a failure, and its sweeper's to tell
                raise
            job = HydraConfig.get()
            e = disk_full(e, Path(job.runtime.output_dir)) or e
            details = "" if isinstance(e, UserError) else "\n\n" + traceback.format_exc()
            if not in_multirun():  # its run dir exists: it says why the run failed
                record_failure(e, job.runtime.output_dir, details)
                if isinstance(e, UserError):
                    refuse(e)
                raise
            raise job_failed(e, job.runtime.output_dir, job.job.num, details) from None

    return wrapper
