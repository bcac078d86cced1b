"""What a run prints while it trains: the chapter's epoch lines, a progress bar and the model's parameters."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from fashion_mnist_softmax.run.record import epoch_line, epoch_summary


class EpochLines(L.Callback):
    """Prints the chapter's line for each epoch, from the run's record."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.print(epoch_line(epoch_summary(trainer).history[-1]))


class ParameterSummary(L.Callback):
    """Prints the model's parameters and their shapes when fitting starts: W and b, as in the chapter."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            params = list(pl_module.named_parameters())
            lines = [f"  {name}  {' × '.join(map(str, p.shape))}" for name, p in params]
            print(f"{type(pl_module).__name__}: {sum(p.numel() for _, p in params):,} parameters", *lines, sep="\n")


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar for training, the epochs counted from 1 as in the epoch lines, and, with
    ``show_test``, for testing (``eval.py``). It draws on a terminal only: in a file or a pipe each redraw would
    be a line of its own, and the epoch lines say how training goes."""

    def __init__(self, refresh_rate: int = 1, show_test: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.show_test = show_test
        if not sys.stdout.isatty():
            self.disable()  # and the run's lines are printed as they are, not through a bar

    @property
    def train_description(self) -> str:
        return f"epoch {self.trainer.current_epoch + 1}/{self.trainer.max_epochs}"

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return super().init_test_tqdm() if self.show_test else Tqdm(disable=True)

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        # a run resumed in the middle of an epoch starts no epoch: its bar starts at the batches already done
        self._start_epoch(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start_epoch(0)

    def _start_epoch(self, done: int) -> None:
        bar = self.train_progress_bar
        bar.reset(convert_inf(self.total_train_batches))
        bar.initial, bar.n = 0, done
        bar.set_description(self.train_description)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(TypeError):  # TypeError: training had not started
            self.train_progress_bar.leave = False  # it would stay on the screen above the run's last words
            self.train_progress_bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run dir says which run it is
        return items
