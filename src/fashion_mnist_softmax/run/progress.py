"""What a run prints while it trains: a progress bar and the model's parameters."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class ParameterSummary(L.Callback):
    """Prints the model's parameters and their shapes when fitting starts: W and b, as in the chapter."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            params = list(pl_module.named_parameters())
            lines = [f"  {name}  {' × '.join(map(str, p.shape))}" for name, p in params]
            print(f"{type(pl_module).__name__}: {sum(p.numel() for _, p in params):,} parameters", *lines, sep="\n")


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, for training only, with the epochs counted from 1 as in the epoch lines."""

    @property
    def train_description(self) -> str:
        return f"epoch {self.trainer.current_epoch + 1}/{self.trainer.max_epochs}"

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.set_description(self.train_description)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run dir says which run it is
        return items
