"""What a stopped run prints for the user to go on: the command that resumes it, or, in a search, how to go on
with the search."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig

from fashion_mnist_softmax.console import python_command
from fashion_mnist_softmax.run.run_dirs import hydra_value, in_multirun


def resume_command(run_dir: Path, ckpt_path: Path) -> str:
    """The command that resumes a run in its own dir from ``ckpt_path``, as the user's shell runs it
    (:func:`~fashion_mnist_softmax.console.python_command`): ``train.py`` with the run's own overrides, as Hydra wrote
    them into its dir (so that any process of the run, a DDP rank or a sweep's worker, says the same), then its dir
    and checkpoint."""
    written = run_dir / ".hydra" / "overrides.yaml"
    given = (yaml.safe_load(written.read_text()) or []) if written.is_file() else []
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    dirs = [f"hydra.run.dir={hydra_value(run_dir)}", f"ckpt_path={hydra_value(ckpt_path)}"]
    return python_command(Path(os.environ.get("PROJECT_ROOT", ".")) / "train.py", *kept, *dirs)


def search_goes_on() -> str | None:
    """In a job of a search (``hparams_search``, or ``hydra/sweeper=optuna``): how to go on after a Ctrl-C. Its
    sweeper records the job's trial as failed, and the resume command would be refused (a search runs with -m):
    the search's own command, run again, continues a stored study. None outside a search."""
    if not in_multirun():
        return None
    hydra = HydraConfig.get()
    choices = hydra.runtime.choices
    if not choices.get("hparams_search") and choices.get("hydra/sweeper") != "optuna":
        return None
    storage, study = hydra.sweeper.get("storage"), hydra.sweeper.get("study_name")
    if storage and study:
        return (
            f"Its trial is recorded as failed in study {study} ({storage}). To go on with the search, run its command "
            f"again (train.py -m ...): it continues the study with new trials."
        )
    why = "its study was held in memory" if not storage else "its study has no name (hydra.sweeper.study_name)"
    return (
        f"Its trial is recorded as failed, and running the command again starts a new search: {why}. A search "
        f"continues when its command runs again if it names a storage and a study, e.g. "
        f"hydra.sweeper.storage=sqlite:///logs/optuna.db hydra.sweeper.study_name=softmax."
    )
