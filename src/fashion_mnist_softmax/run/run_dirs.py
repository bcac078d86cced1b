"""Before a run writes anything: check its config, and claim a run directory of its own.

Hydra creates the run dir and writes ``.hydra/`` into it before the task starts, and names it after the
second the run started in, so that runs started in the same second would share it. This Hydra callback
(``conf/hydra/default.yaml``) comes first: it refuses a mistaken config in one paragraph, so that a
refused run leaves nothing behind, then creates the dir with ``mkdir``, which only one process can do,
and names it ``<time>_1``, ``<time>_2``, ... when another run took the name first.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fashion_mnist_softmax.config.checks import APPS, check_config, check_values, multi_node_refusal, writable
from fashion_mnist_softmax.console import python_command, refuse
from fashion_mnist_softmax.errors import UserError

CLAIMED: list[Path] = []  # the dirs this process claimed


def claim(wanted: Path) -> Path:
    """Create ``wanted``, or the first of ``wanted_1``, ``wanted_2``, ... that no one else created; return it."""
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        path = wanted if n == 0 else wanted.with_name(f"{wanted.name}_{n}")
        try:
            path.mkdir()
            CLAIMED.append(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def unclaim_empty_dirs() -> None:
    """Remove the dirs this process claimed that hold nothing of a run: a run or sweep refused before it wrote
    anything leaves no dir behind (a sweep's ``multirun.yaml``, which Hydra writes as it starts, is no run's)."""
    for path in CLAIMED:
        with contextlib.suppress(OSError):
            if [p.name for p in path.iterdir()] == ["multirun.yaml"]:
                (path / "multirun.yaml").unlink()
            path.rmdir()  # only an empty dir
    CLAIMED.clear()


def hydra_value(path: str | Path) -> str:
    """A path as a value on Hydra's command line: quoted where Hydra's grammar would split it."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_name(run_dir: str = "") -> str:
    """A run's name in the loggers (``${run_name:...}`` in ``conf/logger/``): a job of a multirun by its overrides
    (``hydra.job.override_dirname``: what tells a sweep's jobs apart), any other run by ``run_dir``'s name. MLflow and
    W&B would otherwise draw one from Python's ``random``, seeded alike in every run; TensorBoard names a run by its
    folder, ``<job dir>/tensorboard/<overrides>`` (``${run_name:}``: a single run's is ``<run dir>/tensorboard``)."""
    if in_multirun() and (overrides := HydraConfig.get().job.override_dirname):
        return overrides
    return Path(run_dir).name


# where a run's config resolves, this module is loaded: it is the Hydra callback of every app (conf/hydra/default.yaml)
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def _given(config: DictConfig, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def check_and_claim(config: DictConfig, kind: str, app: str | None) -> None:
    """Check ``config`` and give it a dir of its own: ``kind`` is "run" or "sweep"."""
    choices = config.hydra.runtime.choices
    if kind == "run" and (search := choices.get("hparams_search")):
        given = OmegaConf.to_container(config.hydra.overrides.task)  # as typed
        command = python_command(Path(os.environ.get("PROJECT_ROOT", ".")) / "train.py", "-m", *given)
        raise UserError(
            f"A search (hparams_search={search}) runs with -m: {command}. Without -m, train.py would train one run of "
            f"the search's base config and search nothing."
        )
    if kind == "run" and app in APPS:
        check_config(config, app)
    elif app in APPS:  # a sweep's jobs each check their own values; what they share, here first
        check_values(config)
    local = "slurm" not in str(config.hydra.launcher.get("_target_", "")).lower()
    if kind == "sweep" and local and (num_nodes := OmegaConf.select(config, "trainer.num_nodes", default=1) or 1) > 1:
        raise multi_node_refusal(num_nodes)
    node = config.hydra[kind]
    wanted = Path(str(node.dir)).absolute()
    if _given(config, f"hydra.{kind}.dir"):  # the user's own choice: used as it is, if it holds no other run
        writable(wanted, f"The {kind} dir", f"hydra.{kind}.dir", room=True)
        resuming = (
            app == "train" and config.get("ckpt_path") and Path(config.ckpt_path).absolute().parent.parent == wanted
        )
        if wanted.is_dir() and any(wanted.iterdir()) and not resuming:
            last = wanted / "checkpoints" / "last.ckpt"
            resume = f"; to resume that run, add ckpt_path={last}" if app == "train" and last.is_file() else ""
            raise UserError(
                f"The {kind} directory {wanted} already holds another run, which this one would overwrite. Leave "
                f"hydra.{kind}.dir out to get a new directory, or choose an empty one{resume}."
            )
        return
    writable(config.paths.log_dir, "The log folder", "paths.log_dir", room=True)
    claimed = claim(wanted)
    with read_write(config.hydra), open_dict(config.hydra):
        node.dir = str(claimed)
        if kind == "sweep":  # each job's config is composed again from these overrides
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_value(claimed)}")


class CheckConfigAndClaimRunDir(Callback):
    """Hydra callback: :func:`check_and_claim` each run and each multirun before Hydra writes anything."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        try:
            check_and_claim(config, "run", config_name)
        except UserError as e:
            refuse(e)

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        try:
            check_and_claim(config, "sweep", config_name)
        except UserError as e:
            refuse(e)
