"""The jobs of a fused sweep: which jobs can train together, and each job's outputs, as if it had run alone.

:func:`train_group` trains one group's jobs as a :class:`~fashion_mnist_softmax.fused.population.FusedSoftmaxRegression`
and writes into each job's dir what ``train.py`` writes for a lone run: the epoch history and ``metrics.json``,
checkpoints of the job's own impl (eval.py and predict.py load them), its logger's scalars at the steps a lone
run logs them, its figures and its HParams. What is the same for every job (the samples figure, the layout of
the weights figure) is drawn once.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from PIL import Image

from fashion_mnist_softmax import console
from fashion_mnist_softmax.config.checks import check_config
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.files import write_json_atomic
from fashion_mnist_softmax.fused.population import FusedDataModule, FusedSoftmaxRegression
from fashion_mnist_softmax.models import MODEL_CLASS, MODELS
from fashion_mnist_softmax.models.classifier import Classifier
from fashion_mnist_softmax.run import figures
from fashion_mnist_softmax.run.checkpoints import DATA_STATE
from fashion_mnist_softmax.run.metrics import (
    CONFUSION,
    CURVES,
    EPOCH_TIME,
    HP_TEST_ACC,
    HP_TEST_LOSS,
    HP_VAL_ACC_BEST,
    METRICS_FILE,
    PREDICTIONS,
    SAMPLES,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_EPOCH_TIME,
    TRAIN_LOSS,
    TRAIN_LOSS_STEP,
    TRAIN_THROUGHPUT,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_LOSS,
    WEIGHTS,
)

# what the members of one group may differ in; every other key of their configs must be equal
MEMBER_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "seed", "data.shuffle_seed", "impl", "paths")
SGDS = ("torch.optim.SGD", "fashion_mnist_softmax.models.scratch.SGD")
FUSED_SGD_KEYS = ("_target_", "lr", "momentum", "weight_decay")  # the options the fused SGD applies per member
# torch.optim.SGD's other options at their defaults, which take the fused SGD's steps; any other value does not
SGD_DEFAULTS = {
    "dampening": 0,
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
    "fused": None,
}
DATA_MODULE = "fashion_mnist_softmax.data.datamodule.FashionMNISTDataModule"
HPARAM_KEYS = ("lr", "weight_decay", "momentum", "seed")  # callbacks.hparams.hparams that follow the member keys
# schedulers whose learning rate is each member's lr times one factor for all: the fused SGD applies that factor
SCALING_SCHEDULERS = tuple(
    f"torch.optim.lr_scheduler.{name}LR"
    for name in ("Step", "MultiStep", "Exponential", "CosineAnnealing", "Linear", "Constant", "Polynomial")
)


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        cfg = cfg.get(key) or {}
    cfg.pop(last, None)


def group_key(cfg: dict[str, Any]) -> str:
    """What a job shares with the members of its group: its resolved config without the member keys."""
    shared = copy.deepcopy(cfg)
    for key in (*MEMBER_KEYS, *(f"callbacks.hparams.hparams.{k}" for k in HPARAM_KEYS), "callbacks.figures.out_dir"):
        _drop(shared, key)
    if shared.get("optim", {}).get("_target_") in SGDS:
        _drop(shared, "optim._target_")  # the hand-written SGD and torch's take the same steps
    return json.dumps(shared, sort_keys=True).replace(cfg["paths"]["output_dir"], "<job dir>")


def why_not_fused(cfg: dict[str, Any]) -> str | None:
    """Why a job cannot train in a fused group (it then runs alone), or None."""
    trainer = cfg["trainer"]
    if cfg["impl"]["_target_"] not in MODELS or cfg["data"]["_target_"] != DATA_MODULE:
        return "a model or DataModule of its own: the fused population is this project's softmax regression"
    if cfg["optim"]["_target_"] not in SGDS:
        return f"the optimizer {cfg['optim']['_target_']} is not SGD"
    other = {
        key: value
        for key, value in cfg["optim"].items()
        if key not in FUSED_SGD_KEYS and (key not in SGD_DEFAULTS or value != SGD_DEFAULTS[key])
    }
    if other:
        options = ", ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in other.items()
        )
        return f"the optimizer option{'s' * (len(other) > 1)} {options}, which the fused SGD does not implement"
    several_gpus = trainer.get("accelerator") != "cpu" and torch.cuda.device_count() > 1  # devices=auto takes all
    devices = trainer.get("devices")
    if (
        trainer.get("strategy") not in (None, "auto")
        or devices not in (1, "auto")
        or (devices == "auto" and several_gpus)
    ):
        return "DDP: a fused group trains in one process"
    if trainer.get("num_nodes", 1) != 1:
        return "several nodes"
    if trainer.get("accumulate_grad_batches", 1) != 1 or trainer.get("gradient_clip_val"):
        return "gradient accumulation or clipping"
    if trainer.get("max_steps", -1) != -1 or any(
        trainer.get(f"limit_{s}_batches") is not None for s in ("train", "val", "test")
    ):
        return "a step or batch limit"
    if cfg.get("ckpt_path"):
        return "a resumed run"
    scheduler = cfg.get("scheduler")
    if scheduler and (scheduler["_target_"] not in SCALING_SCHEDULERS or scheduler.get("eta_min")):
        return f"the scheduler {scheduler['_target_']} does not scale every member's lr by one factor"
    return None


class Member:
    """One job of a fused group: its config, its job dir, and what it writes there as a lone run would."""

    def __init__(self, cfg: dict[str, Any], k: int, model: Classifier) -> None:
        """``model``: a model of the member's impl, shared with the other members of that impl, which takes
        each one's weights in turn to save them."""
        self.cfg, self.k, self.dir, self.model = cfg, k, Path(cfg["paths"]["output_dir"]), model
        self.history: list[dict[str, float]] = []
        self.best, self.best_path, self.best_state = -math.inf, None, None
        self.loggers = [
            get_class(node["_target_"])(**{k: v for k, v in node.items() if k != "_target_"})
            for node in (cfg.get("logger") or {}).values()
            if node
        ]
        callbacks = cfg.get("callbacks") or {}
        self.figures = callbacks.get("figures")  # as the Figures callback of a lone run, or None
        self.lr_monitor = "lr_monitor" in callbacks
        self.hparams = (callbacks.get("hparams") or {}).get("hparams")

    def weights(self, module: FusedSoftmaxRegression) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's W (784, 10) and b (10,), copied to the CPU."""
        return module.W.detach()[:, self.k].cpu().clone(), module.b.detach()[self.k].cpu().clone()

    def save(
        self,
        path: Path,
        weights: tuple[torch.Tensor, torch.Tensor],
        best: float,
        data_state: dict,
        epoch: int,
        step: int,
    ) -> None:
        """A checkpoint of the member's own impl, as train.py writes one: eval.py and predict.py load it. It holds
        the weights only (no optimizer, loop or callback states), so train.py refuses to resume it."""
        w, b = weights
        names = {"W": w, "b": b} if hasattr(self.model, "W") else {"net.1.weight": w.T, "net.1.bias": b}
        self.model.load_state_dict(names, strict=False)
        self.model.val_acc_best.max_value.fill_(best)
        state = {
            "state_dict": self.model.state_dict(),
            "hyper_parameters": {**self.model.hparams, **{k: self.cfg["impl"][k] for k in ("optimizer", "scheduler")}},
            MODEL_CLASS: self.model.__module__ + "." + type(self.model).__qualname__,
            DATA_STATE: data_state,
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": L.__version__,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def publish(self, name: str, image: np.ndarray, step: int = 0) -> None:
        """A rendered figure, as the Figures callback publishes it: a PNG in its folder and a TensorBoard image."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(name, image, step, dataformats="HWC")
        out = Path(self.figures["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / f"{name}.png")


class FusedJobs(L.Callback):
    """Each member's epoch history, checkpoints, scalars and figures, in its own job dir, every epoch."""

    def __init__(self, members: list[Member], data_state: Any) -> None:
        self.members, self.data_state = members, data_state
        self.drawn = [member for member in members if member.figures]
        self._start, self._time, self._images = 0.0, None, 0
        self._weights: Figure | None = None  # one figure, redrawn in place for every member
        self._confusion: torch.Tensor | None = None
        self._shown: list[tuple[torch.Tensor, ...]] = []

    def _alive(self, module: FusedSoftmaxRegression, members: list[Member] | None = None) -> list[Member]:
        return [member for member in (self.members if members is None else members) if module.alive[member.k]]

    def on_train_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if self.drawn:  # the same first training images for every member: drawn once
            dataset = trainer.train_dataloader.dataset
            wanted = min(self.drawn[0].figures.get("num_samples", 10), len(dataset))
            image = figures.render(figures.samples_figure(*dataset[torch.arange(wanted)]))
            for member in self.drawn:
                member.publish(SAMPLES, image)

    def on_train_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._start, self._time, self._images = time.perf_counter(), None, 0
        factor = trainer.optimizers[0].param_groups[0]["lr"]  # the scheduler's, the same for every member
        for member in self._alive(module):
            if member.lr_monitor:
                member.log({"lr-SGD": factor * float(module.lr[member.k])}, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx) -> None:
        self._images += batch[1].shape[-1]

    def on_validation_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._time = self._time or time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        seconds = self._time or time.perf_counter() - self._start
        train_loss, train_acc = module.epoch_metrics("train")
        val_loss, val_acc = module.epoch_metrics("val") if "val" in module.sums else ([math.nan] * len(train_loss),) * 2
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        steps = [(s, losses.cpu()) for s, losses in module.step_losses]
        module.step_losses.clear()
        for member in self._alive(module):
            k = member.k
            row = {
                "epoch": epoch,
                TRAIN_LOSS: train_loss[k],
                TRAIN_ACC: train_acc[k],
                VAL_LOSS: val_loss[k],
                VAL_ACC: val_acc[k],
                EPOCH_TIME: seconds,
            }
            member.history.append(row)
            weights = member.weights(module)
            if val_acc[k] > member.best:
                if member.best_path is not None:
                    member.best_path.unlink(missing_ok=True)
                member.best, member.best_state = val_acc[k], weights
                member.best_path = member.dir / "checkpoints" / f"epoch{epoch - 1:03d}-val_acc{val_acc[k]:.4f}.ckpt"
                member.save(member.best_path, weights, member.best, self.data_state, epoch - 1, step)
            member.save(
                member.dir / "checkpoints" / "last.ckpt", weights, member.best, self.data_state, epoch - 1, step
            )
            for s, losses in steps:
                member.log({TRAIN_LOSS_STEP: float(losses[k]), "epoch": epoch - 1}, s)
            member.log(
                {key: value for key, value in row.items() if key not in ("epoch", EPOCH_TIME)}
                | {
                    VAL_ACC_BEST: member.best,
                    TRAIN_EPOCH_TIME: seconds,
                    TRAIN_THROUGHPUT: self._images / seconds,
                    "epoch": epoch - 1,
                },
                step - 1,
            )
        for member in self._alive(module, self.drawn):
            self._weights = figures.weights_figure(module.W.detach()[:, member.k].T, fig=self._weights)
            member.publish(WEIGHTS, figures.render(self._weights), step=epoch)
        alive = self._alive(module)
        if alive:
            losses, accs = [train_loss[mb.k] for mb in alive], [val_acc[mb.k] for mb in alive]
            print(
                f"fused epoch {epoch}: {len(alive)} of {len(self.members)} jobs, loss {min(losses):.4f}-"
                f"{max(losses):.4f}, val acc {min(accs):.3f}-{max(accs):.3f}, {seconds:.2f} s",
                flush=True,
            )

    def on_fit_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._weights = curves_fig = None  # one figure for every member's curves, cleared and drawn anew
        for member in self._alive(module, self.drawn):
            if member.history:
                epochs = [row["epoch"] for row in member.history]
                curves = {name: [row[name] for row in member.history] for name in (TRAIN_LOSS, TRAIN_ACC, VAL_ACC)}
                curves_fig = figures.curves_figure(epochs, curves, fig=curves_fig)
                member.publish(CURVES, figures.render(curves_fig), step=epochs[-1])

    def on_test_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._confusion = torch.zeros(len(self.members) * 100, dtype=torch.long, device=module.device)
        self._shown = []

    def on_test_batch_end(
        self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are each member's predicted classes, (B, K)."""
        if not self.drawn:
            return
        labels = batch[1]
        members = torch.arange(outputs.shape[1], device=outputs.device)
        self._confusion += torch.bincount(
            (members * 100 + labels.view(-1, 1) * 10 + outputs).flatten(), minlength=len(self._confusion)
        )
        wanted = self.drawn[0].figures.get("num_predictions", 20) - sum(len(shown[0]) for shown in self._shown)
        if wanted > 0:
            self._shown.append(tuple(t[:wanted].cpu() for t in (batch[0], labels, outputs)))

    def on_test_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if not self.drawn:
            return
        confusion = self._confusion.view(-1, 10, 10).cpu()
        images, labels, predicted = (torch.cat(parts) for parts in zip(*self._shown, strict=True))
        confusion_fig = predictions_fig = None  # drawn for the first member, redrawn in place for the others
        for member in self._alive(module, self.drawn):
            confusion_fig = figures.confusion_figure(confusion[member.k], fig=confusion_fig)
            member.publish(CONFUSION, figures.render(confusion_fig), trainer.global_step)
            predictions_fig = figures.predictions_figure(images, labels, predicted[:, member.k], fig=predictions_fig)
            member.publish(PREDICTIONS, figures.render(predictions_fig), trainer.global_step)


def train_group(cfgs: list[dict[str, Any]]) -> list[float | UserError]:
    """Train the resolved configs of one group's jobs together; write each job's outputs; return each job's
    ``val/acc_best``, or the :class:`UserError` it failed with."""
    console.quiet()
    results: list[float | UserError] = [UserError("not trained")] * len(cfgs)
    valid = []
    for i, cfg in enumerate(cfgs):
        try:
            check_config(OmegaConf.create(cfg), "train")
            valid.append(i)
        except UserError as e:
            results[i] = e
    if not valid:
        return results

    def shuffle_seed(i: int) -> int:
        return cfgs[i]["data"]["shuffle_seed"]

    order = sorted(valid, key=lambda i: (shuffle_seed(i), cfgs[i]["seed"]))  # members that share batches side by side
    base = cfgs[order[0]]
    data = {k: v for k, v in base["data"].items() if k not in ("_target_", "shuffle_seed")}
    datamodule = FusedDataModule(sorted({shuffle_seed(i) for i in order}), **data)
    module = FusedSoftmaxRegression(
        [cfgs[i]["seed"] for i in order],
        [shuffle_seed(i) for i in order],
        [cfgs[i]["optim"]["lr"] for i in order],
        [cfgs[i]["optim"].get("momentum") or 0.0 for i in order],
        [cfgs[i]["optim"].get("weight_decay") or 0.0 for i in order],
        base.get("scheduler"),
    )
    models = {}  # one per impl, shared by its members: a model with its metrics is larger than its weights
    for impl in (cfgs[i]["impl"] for i in order):
        if impl["_target_"] not in models:
            models[impl["_target_"]] = get_class(impl["_target_"])(
                optimizer=impl["optimizer"], scheduler=impl["scheduler"]
            )
    members = [Member(cfgs[i], k, models[cfgs[i]["impl"]["_target_"]]) for k, i in enumerate(order)]
    datamodule.setup("fit")
    jobs = FusedJobs(members, datamodule.state_dict())
    trainer_args = {k: v for k, v in base["trainer"].items() if k not in ("_target_", "default_root_dir")}
    trainer = L.Trainer(
        **trainer_args,
        logger=False,
        callbacks=[jobs],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=Path(base["paths"]["output_dir"]).parent,
    )
    trainer.fit(module, datamodule=datamodule)
    gc.collect()  # the training's cyclic garbage, freed before K members' test figures are drawn (tens of MB)
    with torch.no_grad():  # each member tested with the checkpoint its test_ckpt names
        for member in members:
            if module.alive[member.k] and base["test_ckpt"] == "best" and member.best_state is not None:
                w, b = member.best_state
                module.W[:, member.k], module.b[member.k] = w.to(module.W.device), b.to(module.b.device)
    trainer.test(module, datamodule=datamodule, verbose=False)
    test_loss, test_acc = module.epoch_metrics("test")
    for member, i in zip(members, order, strict=True):
        if not module.alive[member.k]:  # its loggers write what they hold, as a lone run's do when it fails
            for logger in member.loggers:
                logger.finalize("failed")
            results[i] = UserError(module.failures[member.k])
            continue
        tested = member.best_path if base["test_ckpt"] == "best" else member.dir / "checkpoints" / "last.ckpt"
        metrics = {
            "impl": member.model.name,
            "seed": member.cfg["seed"],
            TEST_ACC: test_acc[member.k],
            TEST_LOSS: test_loss[member.k],
            VAL_ACC_BEST: member.best,
            "test_ckpt": str(tested),
            "hparams": member.cfg,
            "history": member.history,
        }
        member.log({TEST_ACC: test_acc[member.k], TEST_LOSS: test_loss[member.k]}, trainer.global_step)
        for logger in member.loggers:
            if member.hparams is not None and isinstance(logger, TensorBoardLogger):  # as the HParams callback does
                final = {
                    HP_TEST_ACC: test_acc[member.k],
                    HP_TEST_LOSS: test_loss[member.k],
                    HP_VAL_ACC_BEST: member.best,
                }
                logger.log_hyperparams({"impl": member.model.name, **member.hparams}, final, step=trainer.global_step)
            logger.finalize("success")
        write_json_atomic(member.dir / METRICS_FILE, metrics)
        results[i] = member.best
    return results
