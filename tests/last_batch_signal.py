"""A callback for tests: the process sends itself SIGINT during the last training step of one epoch.

Loaded into a real ``train.py`` by ``+callbacks.signal._target_=last_batch_signal.SignalAtLastBatch`` with
this folder on ``PYTHONPATH``: the signal lands in that step on every machine, however fast.
"""

import os
import signal

import lightning as L


class SignalAtLastBatch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch  # counted from 1, as in the epoch lines

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch + 1 == self.epoch and trainer.is_last_batch:
            os.kill(os.getpid(), signal.SIGINT)
