"""DDP that stays correct inside Hydra sweeps: every rank of a job runs that job's exact config.

Lightning starts the other ranks by running the script again with the parent's ``sys.argv``. Inside
a multirun that argv holds ``-m`` and the sweep values, so each child starts a sweep of its own (and
with Optuna samples its own hyperparameters), and in a joblib worker there is no script to run at all.

So the job process does not train itself. Like ``torchrun``, it writes the job's resolved config next
to its outputs, starts one process per local rank on it (``python -m fashion_mnist_softmax.distributed
<config>`` with ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` set), waits for them, and
returns what rank 0 wrote to ``metrics.json``. Lightning sees ``LOCAL_RANK`` in each rank and starts
nothing itself. The job process keeps no process group and no DDP variables, so the next job of a sweep
starts clean. Where the cluster starts the ranks itself (SLURM, torchrun), each rank trains in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.errors import UserError

RANK_CONFIG_FILE = "ddp_config.yaml"


def launches_ranks(trainer: L.Trainer) -> bool:
    """True when Lightning would start the ranks by re-running the script (DDP's default launcher)."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


def config_digest(cfg: dict[str, Any]) -> str:
    """A short fingerprint of a resolved config, printed by the job and by every rank."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _say(line: str) -> None:
    """Print a line in one write, so that lines from several ranks never interleave."""
    print(line + "\n", end="", flush=True)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """Train ``cfg`` with one process per local rank of ``trainer``; return rank 0's metrics."""
    num_nodes, num_processes = trainer.num_nodes, trainer.num_devices
    if num_nodes > 1 and _in_multirun():
        raise UserError(
            f"trainer.num_nodes={num_nodes} cannot run inside a multirun with a local launcher: every node would "
            "run its own sweep, and with Optuna its own hyperparameters. Use a cluster launcher that starts every "
            "rank of a job (hydra/launcher=submitit_slurm with hydra.launcher.nodes=<num_nodes> and "
            "hydra.launcher.tasks_per_node=<devices>), or run one job at a time without -m."
        )
    run_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_file = run_dir / RANK_CONFIG_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), config_file)

    env = os.environ.copy()
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("NODE_RANK", "0")
    env["WORLD_SIZE"] = str(num_nodes * num_processes)
    _say(f"ddp job {run_dir}: {num_processes} ranks on this node, config {config_digest(resolved)}")
    command = [sys.executable, "-m", "fashion_mnist_softmax.distributed", str(config_file)]
    procs = [subprocess.Popen(command, env={**env, "LOCAL_RANK": str(r)}) for r in range(num_processes)]
    _wait_all(procs, run_dir)
    return m.read_metrics(run_dir)


def _wait_all(procs: list[subprocess.Popen], run_dir: Path) -> None:
    """Wait for every rank; if one fails, stop the others (they would hang in a collective)."""
    while None in (codes := [p.poll() for p in procs]) and not any(codes):
        time.sleep(0.2)
    failed = [(rank, code) for rank, code in enumerate(codes) if code]  # before stopping the others
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for rank, code in failed:
        if code == 2:
            raise UserError(f"DDP rank {rank} of {run_dir} stopped with the error printed above.")
        raise RuntimeError(f"DDP rank {rank} of {run_dir} failed with exit status {code}.")


def main(config_file: str) -> None:
    """One rank: train the config the job wrote (``python -m fashion_mnist_softmax.distributed FILE``)."""
    from fashion_mnist_softmax.errors import friendly_errors
    from fashion_mnist_softmax.training import train

    cfg = OmegaConf.load(config_file)
    digest = config_digest(OmegaConf.to_container(cfg))
    _say(f"ddp local rank {os.environ['LOCAL_RANK']} of {Path(config_file).parent}: config {digest}")
    try:
        friendly_errors(train)(cfg)
    finally:  # a rank that exits with gloo's threads still running aborts ("terminate called ...")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
