"""How a run's checkpoints are written: whole or not at all, in their own folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashion_mnist_softmax.files import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temp file beside the checkpoint and a rename: a run stopped while it
    writes (a full disk, a kill) leaves the checkpoint it had, never half of a new one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(checkpoint, f))
