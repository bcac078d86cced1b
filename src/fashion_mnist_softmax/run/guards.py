"""What guards a run: a diverged loss stops it in one paragraph, Ctrl-C or SIGTERM saves where it stopped."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_mnist_softmax.errors import UserError


class DivergedLoss:
    """The training losses of one or more models, and the first of each model's that diverged.

    The stable log-sum-exp keeps the loss finite long after training has diverged (``optim.lr=1e30``
    gives losses near 1e31), hence ``max_loss``; cross-entropy over ten classes starts at ln 10.
    Reading a loss makes the host wait for the device: on an accelerator the losses are read together
    every ``check_every`` (50) steps and at each epoch's end, on the CPU at once. Either way the first bad
    batch is found.
    """

    def __init__(self, max_loss: float | torch.Tensor = 1e6, check_every: int | None = None) -> None:
        self.max_loss, self.check_every = max_loss, check_every  # None: 1 on the CPU, 50 on an accelerator
        self.pending: list[torch.Tensor] = []

    def check(self, losses: torch.Tensor, last: bool) -> list[tuple[int, int, float]]:
        """Add one step's losses, (K,). Once they are read: each model whose loss diverged since the last read,
        as (model, how many steps before this one it diverged, its loss then)."""
        self.pending.append(losses.detach())
        if len(self.pending) < (self.check_every or (1 if losses.device.type == "cpu" else 50)) and not last:
            return []
        read, self.pending = torch.stack(self.pending).float().cpu(), []
        bad = ~(read.abs() <= self.max_loss)  # (steps, K); NaN fails every comparison
        firsts = [(k, int(bad[:, k].nonzero()[0])) for k in bad.any(dim=0).nonzero().flatten().tolist()]
        return [(k, len(read) - 1 - first, float(read[first, k])) for k, first in firsts]

    @staticmethod
    def message(max_loss: float, epoch: int, batch: int, loss: float, lr: float) -> str:
        return (
            f"Training stopped: the loss diverged (a non-finite loss, or above {max_loss:g}) at epoch {epoch}, batch "
            f"{batch}: loss {loss:g}. The likely cause is a learning rate that is too high (optim.lr={lr:g}). "
            f"Lower optim.lr (the chapter uses 0.1)."
        )


class StopOnDivergedLoss(L.Callback):
    """Stops training at the first diverged training loss (:class:`DivergedLoss`), naming its batch."""

    def __init__(self, max_loss: float = 1e6, check_every: int | None = None) -> None:
        self.losses = DivergedLoss(max_loss, check_every)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.losses.pending = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        for _, back, loss in self.losses.check(outputs["loss"].view(1), trainer.is_last_batch):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            epoch = trainer.current_epoch + 1
            raise UserError(DivergedLoss.message(self.losses.max_loss, epoch, batch_idx + 1 - back, loss, lr))


class HeldInterrupt(L.Callback):
    """Notes Ctrl-C (SIGINT) while fitting, for the run to stop where its state is whole, instead of where the
    signal lands; the handler before it comes back at the fit's end, or, once a Ctrl-C stopped the fit, when the run
    has written its last files (:meth:`release`): a Ctrl-C pressed again meanwhile would stop it between two."""

    def __init__(self) -> None:
        self._interrupted = False
        self._previous_handler: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
            self._previous_handler = signal.signal(signal.SIGINT, self._note_interrupt)

    def _note_interrupt(self, signum: int, frame: Any) -> None:
        self._interrupted = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._interrupted:
            self.release()

    def release(self) -> None:
        """Give SIGINT back to the handler it had before the fit."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class SaveOnInterrupt(HeldInterrupt):
    """On Ctrl-C (SIGINT) or SIGTERM, save ``last.ckpt`` between two training steps, then stop.

    Lightning stops at a step's end on SIGTERM; SIGINT is made to do the same, so that the checkpoint
    resumes exactly where the run stopped. A SIGINT during an epoch's last step or its validation stops
    the run once the epoch has ended and its checkpoints are written: a checkpoint taken after the last
    step would resume into a finished epoch, whose validation and epoch end Lightning then skips.
    The run then says how to resume (:func:`~fashion_mnist_softmax.run.commands.resume_command`). Exit status: 1
    after SIGINT, 128 + 15 after SIGTERM.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__()
        self.path = Path(dirpath) / "last.ckpt"
        self.saved = False  # by an interrupt: a Ctrl-C before training starts is Lightning's, and saves nothing

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from
        self.saved = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._interrupted and not trainer.is_last_batch:
            self._save(trainer)
            raise KeyboardInterrupt

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._interrupted:
            trainer.should_stop = True  # Lightning's own graceful stop: the epoch's checkpoints come first

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._interrupted:  # after an epoch's end: last_checkpoint has written last.ckpt
            self.saved = True
            raise KeyboardInterrupt

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer)
            exception.code = 128 + signal.SIGTERM  # Lightning's own exit would read as success
