"""The jobs of a fused sweep: which jobs can train together, and each job's outputs, as if it had run alone.

:func:`train_group` trains one group's jobs as one ``FusedSoftmaxRegression`` (``fused/population.py``).
Each member makes its lone run's own callbacks and loggers from its config, and :class:`MemberOutputs` hands them
the population's values, member by member: the epoch history and ``metrics.json`` (``EpochSummary``), checkpoints
named by the member's ``ModelCheckpoint`` and written weights-only in its own impl (eval.py and predict.py load
them), its scalars at the steps a lone run logs them, its figures (``Figures``, drawn in place on one set of
figures that every member shares) and its ``HParams``. What a lone run's callbacks write, a fused job writes too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import math
import multiprocessing
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.utils import env_override
from hydra.utils import get_class
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from fashion_mnist_softmax import console
from fashion_mnist_softmax.config.checks import check_machine
from fashion_mnist_softmax.config.schema import DataConfig, ScratchSGDConfig, SGDConfig
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.files import write_json_atomic
from fashion_mnist_softmax.models import MODELS
from fashion_mnist_softmax.models.classifier import Classifier
from fashion_mnist_softmax.run.checkpoints import save_weights
from fashion_mnist_softmax.run.guards import HeldInterrupt, SaveOnInterrupt, StopOnDivergedLoss
from fashion_mnist_softmax.run.history import EpochSummary, fit_validation, run_metrics
from fashion_mnist_softmax.run.inspection import Figures, HParams, abandoned, published
from fashion_mnist_softmax.run.metrics import (
    COMPLETED,
    CURVES,
    INTERRUPTED,
    METRICS_FILE,
    PRUNED,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    TRAIN_LOSS_STEP,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_LOSS,
    WEIGHTS,
)
from fashion_mnist_softmax.run.progress import ParameterSummary
from fashion_mnist_softmax.run.pruning import ReportToTrial, objective
from fashion_mnist_softmax.run.training import finish_loggers, instantiate_all, sweep_stopped

from .fused_launcher import usable_cores
from .population import FusedDataModule, FusedSoftmaxRegression

# what the members of one group may differ in; every other key of their configs must be equal
MEMBER_KEYS = (
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "seed",
    "data.shuffle_seed",
    "impl",
    "paths",
    "trial",
)
SGDS = (SGDConfig._target_, ScratchSGDConfig._target_)
PAINTERS = 4  # processes drawing figures at most: each holds matplotlib and its figures, about 110 MB
FUSED_SGD_KEYS = ("_target_", "lr", "momentum", "weight_decay")  # the options the fused SGD applies per member
# torch.optim.SGD's other options at their defaults, which take the fused SGD's steps; any other value does not
SGD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SGDConfig) if f.name not in FUSED_SGD_KEYS}
DATA_MODULE = DataConfig._target_
# the callbacks whose work a fused member does through them; a job with any other runs alone
DRIVEN = (
    EpochSummary,
    StopOnDivergedLoss,
    SaveOnInterrupt,
    ModelCheckpoint,
    LearningRateMonitor,
    Figures,
    HParams,
    ReportToTrial,
)
REQUIRED = (EpochSummary, StopOnDivergedLoss, ModelCheckpoint)  # what a member's outputs are written through
QUIET = (ProgressBar, ParameterSummary)  # what a lone run prints: a fused group prints one line an epoch instead
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


def group_key(cfg: dict[str, Any], written: dict[str, Any]) -> str:
    """What a job shares with the members of its group: its resolved config without the member keys, with the nodes
    that the launcher kept as written (unresolved: ``${optim.lr}`` in its callbacks is one value for every member)."""
    shared = copy.deepcopy(cfg) | written
    for key in MEMBER_KEYS:
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
    if trainer.get("precision", "32-true") != "32-true":
        return f"the precision {trainer['precision']}: a fused group trains in 32-true"
    if trainer.get("max_steps", -1) != -1 or any(
        trainer.get(f"limit_{s}_batches") is not None for s in ("train", "val", "test")
    ):
        return "a step or batch limit"
    if cfg.get("ckpt_path"):
        return "a resumed run"
    nodes = [node for node in (cfg.get("callbacks") or {}).values() if node and "_target_" in node]
    targets = [node["_target_"] for node in nodes]
    try:
        classes = [get_class(target) for target in targets]
    except Exception as e:  # the job, run alone, fails alone
        return f"a callback that cannot be found ({type(e).__name__})"
    if other := [t for t, cls in zip(targets, classes, strict=True) if not issubclass(cls, DRIVEN + QUIET)]:
        return f"the callback {other[0]}, which a fused group cannot run for each of its jobs"
    if not all(any(issubclass(cls, needed) for cls in classes) for needed in REQUIRED):
        return "it lacks a callback that every run has (conf/callbacks/always.yaml)"
    for node, cls in zip(nodes, classes, strict=True):
        kept = (node.get("monitor"), node.get("mode", "min"), node.get("save_top_k", 1))
        if issubclass(cls, ModelCheckpoint) and kept[0] is not None and kept != (VAL_ACC, "max", 1):
            return f"a best checkpoint other than the one of the highest {VAL_ACC} (monitor, mode, save_top_k)"
    if cfg.get("test_ckpt") not in ("best", "last"):
        return "test_ckpt names a checkpoint of its own"
    scheduler = cfg.get("scheduler")
    if scheduler and (scheduler["_target_"] not in SCALING_SCHEDULERS or scheduler.get("eta_min")):
        return f"the scheduler {scheduler['_target_']} does not scale every member's lr by one factor"
    return None


def _one(callbacks: list[Any], cls: type) -> Any:
    return next((c for c in callbacks if isinstance(c, cls)), None)


class Member:
    """One job of a fused group: its config, its place ``k`` in the population, and its lone run's callbacks and
    loggers, made from its config."""

    def __init__(self, cfg: dict[str, Any], k: int, model: Classifier, figs: dict[str, Any]) -> None:
        """``model``: a model of the member's impl, shared with the other members of that impl, which takes each
        one's weights in turn to save them; ``figs``: the figures every member draws on in turn."""
        self.cfg, self.k, self.model = cfg, k, model
        self.loggers: list[Logger] = instantiate_all(cfg.get("logger"))
        callbacks = instantiate_all(cfg.get("callbacks"))
        self.summary: EpochSummary = _one(callbacks, EpochSummary)
        self.guard: StopOnDivergedLoss = _one(callbacks, StopOnDivergedLoss)
        self.figures: Figures | None = _one(callbacks, Figures)
        if self.figures is not None:
            self.figures.figs = figs
        self.hparams: HParams | None = _one(callbacks, HParams)
        self.reporter: ReportToTrial | None = _one(callbacks, ReportToTrial)
        # the scalar that LearningRateMonitor logs, named after the optimizer's class as it names it
        optimizer = cfg["optim"]["_target_"].rpartition(".")[2]
        self.lr_tag = f"lr-{optimizer}" if _one(callbacks, LearningRateMonitor) else None
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        self.best_checkpoint = next(c for c in checkpoints if c.monitor is not None)
        self.last_checkpoint = next(c for c in checkpoints if c.monitor is None)
        self.best, self.best_path, self.best_state = -math.inf, None, None

    def weights(self, module: FusedSoftmaxRegression) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's W (784, 10) and b (10,), copied to the CPU."""
        return module.W.detach()[:, self.k].cpu().clone(), module.b.detach()[self.k].cpu().clone()

    def model_hparams(self) -> dict[str, Any]:
        """The hparams its lone run's model would have: the impl's, with the member's own optimizer and scheduler."""
        return {**self.model.hparams, **{key: self.cfg["impl"][key] for key in ("optimizer", "scheduler")}}

    def save(self, path: str, weights: tuple[torch.Tensor, torch.Tensor], data_state: dict, epoch: int, step: int):
        """A weights-only checkpoint of the member's own impl, with its own hparams."""
        self.model.load_weights(*weights)
        self.model.val_acc_best.max_value.fill_(self.best)
        save_weights(Path(path), self.model, self.model_hparams(), data_state, epoch, step)

    @property
    def pruned(self) -> bool:
        """Whether its search's pruner stopped it."""
        return self.reporter is not None and self.reporter.pruned_at is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)


class MemberOutputs(HeldInterrupt):
    """Hands each member's share of the population's values to its callbacks and loggers, every epoch and after
    testing, as a lone run's Lightning hooks hand them theirs."""

    def __init__(self, members: list[Member], data_state: Any, figs: dict[str, Any]) -> None:
        super().__init__()
        self.members, self.data_state, self.figs = members, data_state, figs
        self.drawn = [member for member in members if member.figures is not None]
        self._start, self._time, self._images = 0.0, None, 0
        self._confusion: torch.Tensor | None = None
        self._shown: list[tuple[torch.Tensor, ...]] = []

    def _alive(self, module: FusedSoftmaxRegression, members: list[Member] | None = None) -> list[Member]:
        return [member for member in (self.members if members is None else members) if module.alive[member.k]]

    def on_train_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        # Ctrl-C stops the population between two steps, or once every member has its epoch's row and checkpoints
        super().on_train_start(trainer, module)
        for member in self.members:  # as a lone run's trainer logs its model's hparams when fitting starts
            for logger in member.loggers:
                logger.log_hyperparams(member.model_hparams())
        for member in self.drawn:
            member.figures.draw_samples(member.loggers, trainer.train_dataloader.dataset)

    def on_train_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._start, self._time, self._images = time.perf_counter(), None, 0
        factor = trainer.optimizers[0].param_groups[0]["lr"]  # the scheduler's, the same for every member
        for member in self._alive(module):
            if member.lr_tag:
                member.log({member.lr_tag: factor * float(module.lr[member.k])}, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx) -> None:
        self._images += batch[1].shape[-1]
        if self._interrupted and not trainer.is_last_batch:
            raise KeyboardInterrupt

    def on_validation_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if fit_validation(trainer):
            self._time = self._time or time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        seconds = self._time or time.perf_counter() - self._start
        validated = "val" in module.sums
        train_loss, train_acc = module.epoch_metrics("train")
        val_loss, val_acc = module.epoch_metrics("val") if validated else ([], [])
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        steps = [(s, losses.cpu()) for s, losses in module.step_losses]
        module.step_losses.clear()
        for member in self._alive(module):
            k = member.k
            metrics = {TRAIN_LOSS: train_loss[k], TRAIN_ACC: train_acc[k]}
            metrics |= {VAL_LOSS: val_loss[k], VAL_ACC: val_acc[k]} if validated else {}
            member.summary.add(epoch, metrics, seconds)
            weights = member.weights(module)
            improved = validated and val_acc[k] > member.best
            if improved:
                member.best, member.best_state = val_acc[k], weights
            last = member.last_checkpoint.format_checkpoint_name({})
            member.save(last, weights, self.data_state, epoch - 1, step)
            if improved:
                if member.best_path is not None:
                    Path(member.best_path).unlink(missing_ok=True)
                member.best_path = member.best_checkpoint.format_checkpoint_name(
                    {"epoch": epoch - 1, VAL_ACC: val_acc[k]}
                )
                shutil.copyfile(last, member.best_path)  # the same weights, epoch and hparams: written once
            for s, losses in steps:
                member.log({TRAIN_LOSS_STEP: float(losses[k]), "epoch": epoch - 1}, s)
            best = {VAL_ACC_BEST: member.best} if validated else {}
            timing = member.summary.timing(seconds, self._images)
            member.log(metrics | best | timing | {"epoch": epoch - 1}, step - 1)
            if member.figures is not None:
                member.figures.draw_weights(member.loggers, module.W.detach()[:, k].T, epoch)
            if validated and member.reporter is not None and member.reporter.should_prune(val_acc[k], epoch):
                member.reporter.pruned_at = epoch
                module.leave(k)
        if not (alive := self._alive(module)):
            trainer.should_stop = True  # every member pruned or failed
        else:
            losses, accs = (
                [train_loss[mb.k] for mb in alive],
                [val_acc[mb.k] if validated else math.nan for mb in alive],
            )
            print(
                f"fused epoch {epoch}: {len(alive)} of {len(self.members)} jobs, loss {min(losses):.4f}-"
                f"{max(losses):.4f}, val acc {min(accs):.3f}-{max(accs):.3f}, {seconds:.2f} s",
                flush=True,
            )
        # the painters idle before the next epoch: OpenMP's threads, which spin while they wait for work, slow
        # down many times over on cores that other processes use
        published()
        if self._interrupted:
            raise KeyboardInterrupt

    def on_exception(self, trainer: L.Trainer, module: FusedSoftmaxRegression, exception: BaseException) -> None:
        self.teardown(trainer, module, "fit")

    def on_fit_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        for member in self.drawn:  # a pruned member's curves too, as its lone run draws them when it stops
            if module.alive[member.k] or member.pruned:
                member.figures.draw_curves(member.loggers, member.summary.history)
        for name in (WEIGHTS, CURVES):  # drawn for the last time: freed before the test figures are drawn
            self.figs.pop(name, None)

    def on_test_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._confusion = torch.zeros(len(self.members) * 100, dtype=torch.long, device=module.device)
        self._shown = []

    def on_test_batch_end(
        self, trainer: L.Trainer, module: FusedSoftmaxRegression, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """``outputs`` are each member's predicted classes, (B, K): the members' confusion matrices, in one count."""
        if not self.drawn:
            return
        labels = batch[1]
        members = torch.arange(outputs.shape[1], device=outputs.device)
        self._confusion += torch.bincount(
            (members * 100 + labels.view(-1, 1) * 10 + outputs).flatten(), minlength=len(self._confusion)
        )
        wanted = self.drawn[0].figures.num_predictions - sum(len(shown[0]) for shown in self._shown)
        if wanted > 0:
            self._shown.append(tuple(t[:wanted].cpu() for t in (batch[0], labels, outputs)))

    def on_test_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if not self.drawn:
            return
        confusion = self._confusion.view(-1, 10, 10).cpu()
        images, labels, predicted = (torch.cat(parts) for parts in zip(*self._shown, strict=True))
        for member in self._alive(module, self.drawn):
            shown = (images, labels, predicted[:, member.k])
            member.figures.draw_tested(member.loggers, confusion[member.k], shown, trainer.global_step)


@contextlib.contextmanager
def _painting(members: list[Member]) -> Iterator[None]:
    """Processes that draw the members' figures while the population trains and tests, one a core up to
    ``PAINTERS``, started now, while the data loads (none where no member draws, or on one core); stopped however
    the group ends, with the figures of a group that failed left unlogged."""
    drawing = [member.figures for member in members if member.figures is not None]
    n = min(PAINTERS, usable_cores())
    painter = None
    if drawing and n > 1:
        painter = ProcessPoolExecutor(n, multiprocessing.get_context("spawn"))  # this process's threads: no fork
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # they start ignoring Ctrl-C,
        try:  # which reaches the whole process group: this process says it stopped
            for _ in range(n):
                painter.submit(int)  # each process starts on a task
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        for drawer in drawing:
            drawer.painter, drawer.in_flight = painter, n  # so that the population waits, and does not vie with them
    try:
        yield
    finally:
        abandoned()
        if painter is not None:
            painter.shutdown(cancel_futures=True)


def _interrupted(members: list[Member], max_epochs: int) -> None:
    """Each member's ``metrics.json`` with the epochs it finished, its loggers ended, one line, and the summary."""
    with contextlib.suppress(Exception):  # a figure a stopped painter never drew
        published()
    for member in members:
        status = PRUNED if member.pruned else INTERRUPTED
        metrics = run_metrics(
            member.model.name, member.cfg["seed"], {}, None, member.cfg, member.summary.history, status
        )
        write_json_atomic(Path(member.cfg["paths"]["output_dir"]) / METRICS_FILE, metrics)
        finish_loggers(member.loggers, "failed")
    print(
        console.paragraph(
            f"Interrupted after {len(members[0].summary.history)} of {max_epochs} epochs: the {len(members)} jobs of "
            f"this fused group keep their checkpoints (weights only: eval.py and predict.py take them, train.py does "
            f"not resume them). Run the sweep again to train them."
        )
    )
    sweep_stopped("")


def train_group(cfgs: list[dict[str, Any]], envs: list[dict[str, str]]) -> list[float | Exception]:
    """Train the resolved configs of one group's jobs together; write each job's outputs; return each job's
    ``val/acc_best`` (``optuna.TrialPruned`` if its trial was pruned), or the
    :class:`UserError` it failed with."""
    console.quiet()
    results: list[float | UserError] = [UserError("not trained")] * len(cfgs)
    try:  # each config was checked when it was composed; the machine, which every member shares, here
        check_machine(OmegaConf.create(cfgs[0]["trainer"]))
    except UserError as e:
        return [e] * len(cfgs)

    def shuffle_seed(i: int) -> int:
        return cfgs[i]["data"]["shuffle_seed"]

    # members that share batches side by side
    order = sorted(range(len(cfgs)), key=lambda i: (shuffle_seed(i), cfgs[i]["seed"]))
    base = cfgs[order[0]]
    models = {}  # one per impl, shared by its members: a model with its metrics is larger than its weights
    for impl in (cfgs[i]["impl"] for i in order):
        if impl["_target_"] not in models:
            models[impl["_target_"]] = get_class(impl["_target_"])(
                optimizer=impl["optimizer"], scheduler=impl["scheduler"]
            )
    figs: dict[str, Any] = {}  # drawn for the first member, redrawn in place for the others
    members = []
    for k, i in enumerate(order):
        with env_override(envs[i]):  # as Hydra runs a lone job: its callbacks may read it (an Optuna trial)
            members.append(Member(cfgs[i], k, models[cfgs[i]["impl"]["_target_"]], figs))
    data = {k: v for k, v in base["data"].items() if k not in ("_target_", "shuffle_seed")}
    with _painting(members):
        datamodule = FusedDataModule(sorted({shuffle_seed(i) for i in order}), **data)
        module = FusedSoftmaxRegression(
            [cfgs[i]["seed"] for i in order],
            [shuffle_seed(i) for i in order],
            [cfgs[i]["optim"]["lr"] for i in order],
            [cfgs[i]["optim"].get("momentum") or 0.0 for i in order],
            [cfgs[i]["optim"].get("weight_decay") or 0.0 for i in order],
            base.get("scheduler"),
            [member.guard.losses.max_loss for member in members],
            members[0].guard.losses.check_every,
        )
        datamodule.setup("fit")
        outputs = MemberOutputs(members, datamodule.state_dict(), figs)
        trainer_args = {k: v for k, v in base["trainer"].items() if k not in ("_target_", "default_root_dir")}
        trainer = L.Trainer(
            **trainer_args,
            logger=False,
            callbacks=[outputs],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=Path(base["paths"]["output_dir"]).parent,
        )
        try:
            trainer.fit(module, datamodule=datamodule)
            gc.collect()  # the training's cyclic garbage, freed before K members' test figures are drawn (tens of MB)
            with torch.no_grad():  # each member tested with the checkpoint its test_ckpt names
                for member in members:
                    if module.alive[member.k] and base["test_ckpt"] == "best" and member.best_state is not None:
                        w, b = member.best_state
                        module.W[:, member.k], module.b[member.k] = w.to(module.W.device), b.to(module.b.device)
            trainer.test(module, datamodule=datamodule, verbose=False)
        except SystemExit:  # Lightning's own exit after Ctrl-C
            if trainer.interrupted:
                _interrupted(members, trainer.max_epochs)
            raise
        test_loss, test_acc = module.epoch_metrics("test")
        published()  # every member's figures, before its loggers are finalized
        for member, i in zip(members, order, strict=True):
            if member.pruned:  # its search stopped it: untested
                tested, test_ckpt, status = {}, None, PRUNED
            elif not module.alive[member.k]:
                finish_loggers(member.loggers, "failed")
                results[i] = UserError(module.failures[member.k])
                continue
            else:
                tested, status = {TEST_ACC: test_acc[member.k], TEST_LOSS: test_loss[member.k]}, COMPLETED
                last = member.last_checkpoint.format_checkpoint_name({})
                test_ckpt = member.best_path if base["test_ckpt"] == "best" else last
                member.log(tested, trainer.global_step)
            history = member.summary.history
            metrics = run_metrics(member.model.name, member.cfg["seed"], tested, test_ckpt, member.cfg, history, status)
            if member.hparams is not None and tested:
                member.hparams.log_final(
                    member.loggers, member.model.name, tested, metrics[VAL_ACC_BEST], trainer.global_step
                )
            finish_loggers(member.loggers, "success")
            write_json_atomic(Path(member.cfg["paths"]["output_dir"]) / METRICS_FILE, metrics)
            try:
                results[i] = objective(metrics)
            except Exception as e:  # optuna.TrialPruned: its trial was pruned
                results[i] = e
        return results
