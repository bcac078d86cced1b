"""The run's callbacks: what it prints, what it guards against, and what it shows in TensorBoard.

``train`` always adds :class:`EpochSummary`, :class:`StopOnDivergedLoss` and :class:`SaveOnInterrupt`;
the others come from ``conf/callbacks/``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from fashion_mnist_softmax import figures
from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.errors import UserError

TRAIN_METRICS, VAL_METRICS = (m.TRAIN_LOSS, m.TRAIN_ACC), (m.VAL_LOSS, m.VAL_ACC)


def fit_validation(trainer: L.Trainer) -> bool:
    """Whether the trainer is validating for its fit, not for a sanity check."""
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking


class EpochSummary(L.Callback):
    """Prints the chapter's per-epoch line and keeps the per-epoch history for ``metrics.json``.

    ``time_s`` is the epoch's training time, validation excluded; it is logged with the throughput,
    counted from the batch shapes so that nothing waits for the device. The history, and the time so
    far of an epoch stopped in its middle, are part of the checkpoint: a resumed run reports every epoch.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._elapsed, self._images = 0.0, 0  # of the current epoch, before this process's first step of it
        self._start: float | None = None  # of this process's part of the epoch
        self._train_time: float | None = None  # set when the epoch's training ends
        self._validated = False  # this epoch: a validation's metrics stay in callback_metrics until the next one

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._images, self._start, self._train_time = 0.0, 0, time.perf_counter(), None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:  # resumed in the middle of an epoch: Lightning does not start the epoch again
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])

    def _running(self) -> float:
        return self._elapsed + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._train_time is None:  # stop the clock at validation
            self._train_time = self._running()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or fit_validation(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_time is None:
            self._train_time = self._running()
        pl_module.log(m.TRAIN_EPOCH_TIME, self._train_time)
        pl_module.log(m.TRAIN_THROUGHPUT, self._images * trainer.world_size / self._train_time)
        found, names = trainer.callback_metrics, TRAIN_METRICS + (VAL_METRICS if self._validated else ())
        self._validated = False
        row = {"epoch": trainer.current_epoch + 1} | {k: float(found[k]) for k in names if k in found}
        row[m.EPOCH_TIME] = self._train_time
        self.history.append(row)
        pl_module.print(
            f"epoch {row['epoch']}, loss {row.get(m.TRAIN_LOSS, math.nan):.4f}, "
            f"train acc {row.get(m.TRAIN_ACC, math.nan):.3f}, val acc {row.get(m.VAL_ACC, math.nan):.3f}"
        )

    def state_dict(self) -> dict[str, Any]:
        in_epoch = self._start is not None and self._train_time is None
        return {
            "history": self.history,
            "epoch_time_so_far": self._running() if in_epoch else 0.0,
            "epoch_images_so_far": self._images if in_epoch else 0,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self._elapsed, self._images = state_dict["epoch_time_so_far"], state_dict["epoch_images_so_far"]
        self._start = None


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


class StopOnDivergedLoss(L.Callback):
    """Stops training at the first non-finite training loss, or one above ``max_loss``.

    The stable log-sum-exp keeps the loss finite long after training has diverged (``optim.lr=1e30``
    gives losses near 1e31), hence ``max_loss``; cross-entropy over ten classes starts at ln 10.
    Reading a loss makes the host wait for the device: on an accelerator the losses are read together
    every ``check_every`` (50) steps and at each epoch's end, on the CPU at once. Either way the error
    names the first bad batch.
    """

    def __init__(self, max_loss: float = 1e6, check_every: int | None = None) -> None:
        self.max_loss, self.check_every = max_loss, check_every  # None: 1 on the CPU, 50 on an accelerator
        self._losses: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach()
        every = self.check_every or (1 if loss.device.type == "cpu" else 50)
        if every == 1:
            losses = [float(loss)]
        else:
            self._losses.append(loss)
            if len(self._losses) < every and not trainer.is_last_batch:
                return
            losses, self._losses = torch.stack(self._losses).float().cpu().tolist(), []
        bad = [i for i, value in enumerate(losses) if not abs(value) <= self.max_loss]  # NaN fails every comparison
        if bad:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            raise UserError(
                f"Training stopped: the loss diverged (a non-finite loss, or above {self.max_loss:g}) at epoch "
                f"{trainer.current_epoch + 1}, batch {batch_idx - len(losses) + bad[0] + 2}: loss "
                f"{losses[bad[0]]:g}. The likely cause is a learning rate that is too high "
                f"(optim.lr={lr:g}). Lower optim.lr (the chapter uses 0.1). Checkpoints from earlier epochs are kept."
            )


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, save ``last.ckpt`` between two training steps, then stop.

    Lightning stops at a step's end on SIGTERM; SIGINT is made to do the same, so that the checkpoint
    resumes exactly where the run stopped. A SIGINT during an epoch's last step or its validation stops
    the run once the epoch has ended and its checkpoints are written: a checkpoint taken after the last
    step would resume into a finished epoch, whose validation and epoch end Lightning then skips.
    Exit status: 1 after SIGINT, 128 + 15 after SIGTERM.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self._interrupted = False
        self._previous_handler: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
            self._previous_handler = signal.signal(signal.SIGINT, self._note_interrupt)

    def _note_interrupt(self, signum: int, frame: Any) -> None:
        self._interrupted = True

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from
        trainer.lightning_module.print(f"Interrupted: saved {self.path}. Resume with ckpt_path={self.path}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._interrupted and not trainer.is_last_batch:
            self._save(trainer)
            raise KeyboardInterrupt

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._interrupted:
            trainer.should_stop = True  # Lightning's own graceful stop: the epoch's checkpoints come first

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._interrupted:  # after an epoch's end: every checkpoint is written
            pl_module.print(f"Interrupted after epoch {trainer.current_epoch}. Resume with ckpt_path={self.path}")
            raise KeyboardInterrupt

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer)
            exception.code = 128 + signal.SIGTERM  # Lightning's own exit would read as success

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class Figures(L.Callback):
    """Draws the run's figures on rank 0, logs them to TensorBoard and saves them as ``<out_dir>/<name>.png``.

    ``samples`` (the first training images) when training starts, ``weights`` (the templates) at
    every epoch's end, ``curves`` when fitting ends (their history is part of the checkpoint), and,
    from the classes that ``test_step`` returns, ``predictions`` and ``confusion`` after testing.
    """

    curves = (m.TRAIN_LOSS, m.TRAIN_ACC, m.VAL_ACC)

    def __init__(self, out_dir: str | Path, num_samples: int = 10, num_predictions: int = 20) -> None:
        self.out_dir, self.num_samples, self.num_predictions = Path(out_dir), num_samples, num_predictions
        self.history: dict[str, list[float]] = {k: [] for k in ("epoch", *self.curves)}
        self._weights: Figure | None = None
        self._validated = False  # as in EpochSummary
        self._confusion: MulticlassConfusionMatrix | None = None
        self._shown: list[tuple[torch.Tensor, ...]] = []

    def _publish(self, trainer: L.Trainer, name: str, fig: Figure, step: int = 0) -> None:
        """Render once; log the image to TensorBoard and save it as a PNG."""
        image = figures.render(fig)
        for logger in _tensorboards(trainer):
            logger.experiment.add_image(name, image, step, dataformats="HWC")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.out_dir / f"{name}.png")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            dataset = trainer.train_dataloader.dataset
            images, labels = dataset[torch.arange(min(self.num_samples, len(dataset)))]
            self._publish(trainer, m.SAMPLES, figures.samples_figure(images, labels))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or fit_validation(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = trainer.callback_metrics
        self.history["epoch"].append(trainer.current_epoch + 1)
        for name in self.curves:
            shown = name not in VAL_METRICS or self._validated
            self.history[name].append(float(found[name]) if shown and name in found else math.nan)
        self._validated = False
        if trainer.is_global_zero:
            self._weights = figures.weights_figure(pl_module.weight_templates, fig=self._weights)
            self._publish(trainer, m.WEIGHTS, self._weights, step=trainer.current_epoch + 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history["epoch"]:
            series = {name: self.history[name] for name in self.curves}
            fig = figures.curves_figure(self.history["epoch"], series)
            self._publish(trainer, m.CURVES, fig, step=self.history["epoch"][-1])

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_outputs).to(pl_module.device)
        self._shown = []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are the predicted classes that ``test_step`` returns."""
        self._confusion.update(outputs, batch[1])
        if (wanted := self.num_predictions - sum(len(shown[0]) for shown in self._shown)) > 0:
            self._shown.append(tuple(t[:wanted].cpu() for t in (batch[0], batch[1], outputs)))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = self._confusion.compute()  # sums the ranks' matrices, so every rank calls it
        if not trainer.is_global_zero:
            return
        self._publish(trainer, m.CONFUSION, figures.confusion_figure(confusion), step=trainer.global_step)
        images, labels, predicted = (torch.cat(parts) for parts in zip(*self._shown, strict=True))
        fig = figures.predictions_figure(images, labels, predicted)
        self._publish(trainer, m.PREDICTIONS, fig, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}


class HParams(L.Callback):
    """Logs ``hparams`` (name-value pairs) with the final metrics after testing, for TensorBoard's HParams tab.

    Lightning's placeholder ``hp_metric`` is off (``conf/logger/tensorboard.yaml``): hparams logged
    without metrics would hide the metrics logged later.
    """

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = trainer.callback_metrics
        metrics = {m.HP_TEST_ACC: float(found[m.TEST_ACC]), m.HP_TEST_LOSS: float(found[m.TEST_LOSS])}
        best = float(pl_module.val_acc_best.max_value)
        if math.isfinite(best):
            metrics[m.HP_VAL_ACC_BEST] = best
        for logger in _tensorboards(trainer):
            logger.log_hyperparams({"impl": pl_module.name, **self.hparams}, metrics, step=trainer.global_step)
