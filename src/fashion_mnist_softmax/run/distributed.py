"""DDP started by torch's elastic launcher (the engine of ``torchrun``), correct inside Hydra sweeps.

Lightning's own launcher runs the script again with the parent's ``sys.argv``: in a multirun each
rank would start a sweep of its own. So a job that asks for several processes, none started from
outside (``torchrun``, SLURM), does what ``torchrun`` does: ``elastic_launch`` starts one
``python -m fashion_mnist_softmax.run.ddp_rank <resolved config>`` per device, where Lightning finds the
torchelastic environment. Rank 0 writes the outputs; the job process keeps no process group.

A rank stopped by a :class:`UserError` hands its paragraph to the job in a private file of the run dir
(:func:`rank_error_file`), which the job reads, deletes and raises as its own :class:`UserError`: the
paragraph is printed once, and in a multirun it goes to the job's ``error.txt`` and the sweep's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from fashion_mnist_softmax.config.checks import multi_node_refusal
from fashion_mnist_softmax.errors import EXIT_USER_ERROR, UserError
from fashion_mnist_softmax.run.metrics import read_metrics


def must_start_ranks(trainer: L.Trainer) -> bool:
    """True when the trainer asks for several processes and none was started from outside."""
    return trainer.world_size > 1 and not trainer.strategy.cluster_environment.creates_processes_externally


def config_digest(cfg: dict[str, Any]) -> str:
    """A short fingerprint of a resolved config, printed by the job and by every rank."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def rank_error_file(run_dir: str | Path, rank: int | str) -> Path:
    """Where global rank ``rank``, stopped by a :class:`UserError`, leaves its message for the job."""
    return Path(run_dir) / f".rank{rank}.error"


def _take_rank_errors(run_dir: Path, world_size: int) -> dict[int, str]:
    """The messages the ranks left, by rank; the files are deleted, so that the run dir holds what a lone run writes."""
    messages = {}
    for rank in range(world_size):
        path = rank_error_file(run_dir, rank)
        try:
            messages[rank] = path.read_text()
        except FileNotFoundError:
            continue
        path.unlink(missing_ok=True)
    return messages


def start_ranks(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """Train ``cfg`` in one process per device of ``trainer``; return the metrics that rank 0 wrote."""
    run_dir = Path(cfg.paths.output_dir)
    if trainer.num_nodes > 1:
        raise multi_node_refusal(trainer.num_nodes)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    digest = config_digest(resolved)
    print(f"ddp job {run_dir}: {trainer.num_devices} ranks on this node, config {digest}\n", end="", flush=True)
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=trainer.num_devices,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, chosen by the rendezvous store
        max_restarts=0,
    )
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):  # their report of a failed rank: ours is below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    world_size = trainer.num_devices  # one node
    _take_rank_errors(run_dir, world_size)  # none left from an earlier run in this dir
    try:
        elastic_launch(launch, sys.executable)("-m", "fashion_mnist_softmax.run.ddp_rank", json.dumps(resolved))
    except ChildFailedError as e:
        # a rank stopped by a UserError makes the launcher stop the others, rank 0 too (SIGTERM, exit -15): its file
        # says why, whichever rank it was
        if messages := _take_rank_errors(run_dir, world_size):
            raise UserError(messages[min(messages)]) from None
        rank, failure = min(e.failures.items())
        if failure.exitcode == EXIT_USER_ERROR:
            raise UserError(f"DDP rank {rank} of {run_dir} stopped with the error printed above.") from None
        raise RuntimeError(f"DDP rank {rank} of {run_dir} failed with exit status {failure.exitcode}.") from None
    finally:  # whatever else ended the launch (Ctrl-C), no file is left
        _take_rank_errors(run_dir, world_size)
    return read_metrics(run_dir)
