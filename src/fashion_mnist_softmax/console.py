"""The console: a mistake as one paragraph, and silence for the third-party messages that help no one."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import sys
import textwrap
import threading
import warnings
from pathlib import Path

from fashion_mnist_softmax.errors import UserError


def paragraph(message: str) -> str:
    """The message wrapped as one paragraph, paths kept whole so that they can be copied."""
    return textwrap.fill(message, width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def refuse(error: UserError) -> None:
    """End this process with the error's paragraph on stderr and its exit status (``EXIT_USER_ERROR``, 2, for a
    mistake)."""
    print("\nError: " + paragraph(error.message), file=sys.stderr)
    sys.exit(error.exit_status)


def python_command(script: str | Path, *args: str) -> str:
    """The command that runs ``script`` with ``args`` in the user's shell, quoted for it: ``python`` where the shell's
    ``python`` is this process's interpreter (an activated venv), otherwise that interpreter's path (``make train``
    runs ``.venv/bin/python`` in a shell whose ``python`` may be another, or none); paths relative to the working
    directory when under it."""

    def shown(path: Path) -> str:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)

    here, found = Path(sys.executable).absolute(), shutil.which("python")
    same = found is not None and Path(found).absolute().parent == here.parent and Path(found).samefile(here)
    return shlex.join(["python" if same else shown(here), shown(Path(script).absolute()), *args])


# Lightning's info lines: an advertisement, notices about its own defaults, and what the run says itself
LIGHTNING_INFO = (
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "GPU available:",
    "TPU available:",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
    "Restored all states from the checkpoint",
    "LOCAL_RANK:",
    "Detected KeyboardInterrupt",  # the run says how it stopped and how to resume it
    "Running in `fast_dev_run` mode",  # what the user asked for, said twice (Lightning's handler and Hydra's)
)


def _not_lightning_info(record: logging.LogRecord) -> bool:
    return not record.getMessage().lstrip().startswith(LIGHTNING_INFO)


def _not_sigterm(record: logging.LogRecord) -> bool:
    """The run says how it stopped and how to resume it."""
    return "Received SIGTERM" not in record.getMessage()


def _not_new_experiment(record: logging.LogRecord) -> bool:
    """MLflow's experiment for a task is made by its first run, which is no cause for a warning."""
    return not record.getMessage().startswith("Experiment with name")


def _full_disk_left_to_the_run(args: threading.ExceptHookArgs) -> None:
    """A writer thread stopped by a full disk (TensorBoard's) hands its error to the run at its next write, and the
    run says it once (:func:`~fashion_mnist_softmax.run.failures.disk_full`); any other error is printed as ever."""
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in (errno.ENOSPC, errno.EDQUOT)):
        threading.__excepthook__(args)


def quiet() -> None:
    """Silence those messages in this process."""
    threading.excepthook = _full_disk_left_to_the_run
    # torch 2.15 deprecates a pytree class that Lightning 2.6 still uses internally
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_lightning_info)  # a filter it holds already is not added again
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_not_sigterm)
    logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(_not_new_experiment)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # the store's tables made on first use
