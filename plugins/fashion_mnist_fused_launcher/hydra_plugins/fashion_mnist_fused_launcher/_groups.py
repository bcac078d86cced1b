"""The jobs of a fused sweep: which jobs can train together, and each group trained as one population.

:func:`train_group` trains one group's jobs as one ``FusedSoftmaxRegression`` (``_population.py``), each job a
member with its lone run's model, loggers and callbacks (``_members.py``), and ends each job as its lone run ends:
``metrics.json``, the loggers' end, its return value or the error it failed with.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import json
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from fashion_mnist_softmax import console
from fashion_mnist_softmax.config.checks import check_machine, usable_cores
from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.models.scratch import SGD
from fashion_mnist_softmax.run.checkpoint_io import AtomicCheckpointIO
from fashion_mnist_softmax.run.figures import Figures, discard_figures, flush_figures
from fashion_mnist_softmax.run.guards import StopOnDivergedLoss
from fashion_mnist_softmax.run.metrics import COMPLETED, INTERRUPTED, PRUNED
from fashion_mnist_softmax.run.pruning import ReportToTrial, objective
from fashion_mnist_softmax.run.record import EpochSummary, HParams, end_run, run_metrics
from fashion_mnist_softmax.run.training import tested_checkpoint
from fashion_mnist_softmax.sweep_summary import sweep_stopped

from ._members import THE_GROUPS_OWN, Member, Members
from ._population import STANDS_IN_FOR, FusedDataModule, FusedSoftmaxRegression

# what the members of one group may differ in; every other key of their configs must be equal
MEMBER_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "seed", "data.shuffle_seed", "impl", "paths")
SGDS = ("torch.optim.SGD", f"{SGD.__module__}.{SGD.__qualname__}")  # the hand-written SGD takes torch's steps
PAINTERS = 4  # processes drawing figures at most: each holds matplotlib and its figures, about 110 MB
FUSED_SGD_KEYS = ("_target_", "lr", "momentum", "weight_decay")  # the options the fused SGD applies per member
# torch.optim.SGD's other options at their defaults, which take the fused SGD's steps; any other value does not
SGD_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(torch.optim.SGD).parameters.items()
    if name not in FUSED_SGD_KEYS and p.default is not inspect.Parameter.empty
}
# the callbacks a member's own run has, which the group runs for it through their hooks; a job with any other runs alone
RUN_FOR_EACH_MEMBER = (EpochSummary, ModelCheckpoint, Figures, HParams, ReportToTrial)
REQUIRED = (EpochSummary, StopOnDivergedLoss, ModelCheckpoint)  # what a member's outputs are written through
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
        # either SGD, its other options at torch's defaults (why_not_fused): the same steps, whatever keys it declares
        _drop(shared, "optim")
    return json.dumps(shared, sort_keys=True).replace(cfg["paths"]["output_dir"], "<job dir>")


def why_not_fused(cfg: dict[str, Any]) -> str | None:
    """Why a job cannot train in a fused group (it then runs alone), or None."""
    trainer = cfg["trainer"]
    try:
        model, data = get_class(cfg["impl"]["_target_"]), get_class(cfg["data"]["_target_"])
    except Exception as e:  # the job, run alone, fails alone
        return f"a model or DataModule that cannot be found ({type(e).__name__})"
    if not issubclass(model, STANDS_IN_FOR) or data is not FashionMNISTDataModule:
        return "a model or DataModule of its own: the fused population stands in for the chapter's softmax regressions"
    if cfg["optim"]["_target_"] not in SGDS:
        return f"the optimizer {cfg['optim']['_target_']} is not SGD"
    other = {
        key: value
        for key, value in cfg["optim"].items()
        if key not in FUSED_SGD_KEYS and not key.startswith("_") and value != SGD_DEFAULTS.get(key, value)
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
    if trainer.get("precision") not in (None, "32-true"):
        return f"the precision {trainer['precision']}: a fused group trains in 32-true"
    limits = [trainer.get(f"limit_{stage}_batches") for stage in ("train", "val", "test")]
    if trainer.get("max_steps", -1) != -1 or trainer.get("fast_dev_run") or limits != [None] * 3:
        return "a step or batch limit"
    if cfg.get("ckpt_path"):
        return "a resumed run"
    nodes = [node for node in (cfg.get("callbacks") or {}).values() if node and "_target_" in node]
    targets = [node["_target_"] for node in nodes]
    try:
        classes = [get_class(target) for target in targets]
    except Exception as e:  # the job, run alone, fails alone
        return f"a callback that cannot be found ({type(e).__name__})"
    if other := [
        t for t, cls in zip(targets, classes, strict=True) if not issubclass(cls, RUN_FOR_EACH_MEMBER + THE_GROUPS_OWN)
    ]:
        return f"the callback {other[0]}, which a fused group cannot run for each of its jobs"
    if not all(any(issubclass(cls, needed) for cls in classes) for needed in REQUIRED):
        return "it lacks a callback that every run has (conf/callbacks/always.yaml)"
    if any(node.get("every_n_train_steps") or node.get("train_time_interval") for node in nodes):
        return "a checkpoint saved within epochs: a fused group runs its members' callbacks at epochs' ends"
    if cfg.get("test_ckpt") not in ("best", "last") or not cfg.get("test", True):
        return "test_ckpt names a checkpoint of its own, or test=false"
    scheduler = cfg.get("scheduler")
    if scheduler and (scheduler["_target_"] not in SCALING_SCHEDULERS or scheduler.get("eta_min")):
        return f"the scheduler {scheduler['_target_']} does not scale every member's lr by one factor"
    return None


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
        discard_figures()
        if painter is not None:
            painter.shutdown(cancel_futures=True)


def _interrupted(members: list[Member], max_epochs: int) -> None:
    """Each member's ``metrics.json`` with the epochs it finished, its loggers ended, one line, and the summary."""
    with contextlib.suppress(Exception):  # a figure a stopped painter never drew
        flush_figures()
    for member in members:
        history = member.summary.history
        metrics = run_metrics(member.model.name, member.cfg["seed"], history, member.cfg, _stopped(member))
        end_run(member.run_dir, member.loggers, metrics, "failed")
    print(
        console.paragraph(
            f"Interrupted after {len(members[0].summary.history)} of {max_epochs} epochs: the {len(members)} jobs of "
            f"this fused group keep their checkpoints (weights only: eval.py and predict.py take them, train.py does "
            f"not resume them). Run the sweep again to train them."
        )
    )
    sweep_stopped("")


def _stopped(member: Member) -> str:
    return PRUNED if member.pruned else INTERRUPTED


def _load_tested(trainer: L.Trainer, module: FusedSoftmaxRegression, members: Members, test_ckpt: str) -> None:
    """Each member still training takes the weights of the checkpoint its ``test_ckpt`` names, as a lone run tests
    that checkpoint."""
    for member in members.alive(module):
        with members.presenting(trainer, module, member):
            path = tested_checkpoint(trainer, test_ckpt)
        checkpoint = torch.load(path, map_location=module.device, weights_only=True)
        member.model.on_load_checkpoint(checkpoint)
        member.model.load_state_dict(checkpoint["state_dict"])
        member.tested_ckpt = path
        with torch.no_grad():
            module.W[:, member.k], module.b[member.k] = member.model.weights()


def train_group(cfgs: list[dict[str, Any]], envs: list[dict[str, str]]) -> list[float | Exception]:
    """Train the resolved configs of one group's jobs together; write each job's outputs; return each job's
    ``val/acc_best``, or what it raised: the :class:`UserError` it failed with, ``optuna.TrialPruned`` if its trial
    was pruned."""
    console.quiet()
    try:  # each config was checked when it was composed; the machine, which every member shares, here
        check_machine(OmegaConf.create(cfgs[0]["trainer"]))
    except UserError as e:
        return [e] * len(cfgs)
    # members that share batches side by side
    order = sorted(range(len(cfgs)), key=lambda i: (cfgs[i]["data"]["shuffle_seed"], cfgs[i]["seed"]))
    members = [Member(cfgs[i], envs[i], k) for k, i in enumerate(order)]
    base = cfgs[order[0]]
    figs: dict[str, Any] = {}  # drawn for the first member, redrawn in place for the others
    for member in members:
        if member.figures is not None:
            member.figures.figs = figs
    with _painting(members):
        shuffle_seeds = [member.cfg["data"]["shuffle_seed"] for member in members]
        data = {k: v for k, v in base["data"].items() if not k.startswith("_") and k != "shuffle_seed"}
        datamodule = FusedDataModule(sorted(set(shuffle_seeds)), **data)
        module = FusedSoftmaxRegression(
            [tuple(t.detach() for t in member.model.weights()) for member in members],
            [member.model.hparams.optimizer for member in members],
            shuffle_seeds,
            base.get("scheduler"),
            [member.max_loss for member in members],
        )
        members_run = Members(members, figs)
        trainer: L.Trainer = instantiate(
            base["trainer"],
            logger=False,
            callbacks=[members_run],
            plugins=[AtomicCheckpointIO()],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=members[0].run_dir.parent,
        )
        try:
            trainer.fit(module, datamodule=datamodule)
            gc.collect()  # the training's cyclic garbage, freed before K members' test figures are drawn (tens of MB)
            _load_tested(trainer, module, members_run, base["test_ckpt"])
            trainer.test(module, datamodule=datamodule, verbose=False)
        except SystemExit:  # Lightning's own exit after Ctrl-C
            try:
                if trainer.interrupted:
                    _interrupted(members, trainer.max_epochs)
            finally:
                members_run.release()
            raise
        flush_figures()  # every member's figures, before its loggers are finalized
        return [_end(member, module) for member in sorted(members, key=lambda m: order[m.k])]


def _end(member: Member, module: FusedSoftmaxRegression) -> float | Exception:
    """A member's end, as its lone run ends: failed, pruned (untested) or tested."""
    if member.k in module.failures:
        end_run_failed = UserError(module.failures[member.k])
        for logger in member.loggers:
            logger.finalize("failed")
        return end_run_failed
    history, status = member.summary.history, _stopped(member) if member.pruned else COMPLETED
    tested = {} if member.pruned else {k: float(v) for k, v in member.values.items() if k.startswith("test/")}
    test_ckpt = None if member.pruned else member.tested_ckpt
    metrics = run_metrics(member.model.name, member.cfg["seed"], history, member.cfg, status, tested, test_ckpt)
    end_run(member.run_dir, member.loggers, metrics)
    try:
        return objective(metrics)
    except Exception as e:  # optuna.TrialPruned: its trial was pruned
        return e
