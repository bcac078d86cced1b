"""One DDP rank, started by :mod:`fashion_mnist_softmax.run.distributed`: ``python -m ...ddp_rank CONFIG_JSON``.

It trains exactly the job's resolved config (given as JSON), and says so with the config's fingerprint.
A :class:`UserError` ends the rank with ``EXIT_USER_ERROR``, its message left for the job to report
(:func:`~fashion_mnist_softmax.run.distributed.rank_error_file`), or printed here if that file can't be written.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from omegaconf import OmegaConf

from fashion_mnist_softmax.console import refuse
from fashion_mnist_softmax.errors import EXIT_USER_ERROR, UserError
from fashion_mnist_softmax.run.distributed import config_digest, rank_error_file
from fashion_mnist_softmax.run.training import train


def main(config_json: str) -> None:
    resolved = json.loads(config_json)
    run_dir = resolved["paths"]["output_dir"]
    rank, digest = os.environ["LOCAL_RANK"], config_digest(resolved)
    print(f"ddp local rank {rank} of {run_dir}: config {digest}\n", end="", flush=True)  # one write: lines stay whole
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: the ranks share this node's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    try:
        train(OmegaConf.create(resolved))
    except UserError as e:
        try:
            path = rank_error_file(run_dir, os.environ["RANK"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(e.message)
        except OSError:
            refuse(e)  # the job can't read it: the paragraph on this rank's stderr
        sys.exit(EXIT_USER_ERROR)  # the job says it, once
    finally:  # a rank that exits with gloo's threads still running aborts ("terminate called ...")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
