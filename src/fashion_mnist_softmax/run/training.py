"""One training run: fit, test, and write ``metrics.json`` into the run directory."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from fashion_mnist_softmax import console
from fashion_mnist_softmax.checkpoints import load_checkpoint
from fashion_mnist_softmax.console import paragraph
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.files import write_json_atomic
from fashion_mnist_softmax.run import distributed
from fashion_mnist_softmax.run.checkpoint_io import AtomicCheckpointIO
from fashion_mnist_softmax.run.commands import resume_command, search_goes_on
from fashion_mnist_softmax.run.guards import HeldInterrupt, SaveOnInterrupt
from fashion_mnist_softmax.run.metrics import INTERRUPTED, METRICS_FILE, PRUNED, VAL_ACC
from fashion_mnist_softmax.run.pruning import ReportToTrial
from fashion_mnist_softmax.run.record import EpochSummary, end_run, epoch_summary, run_metrics, stage_metrics, test_line
from fashion_mnist_softmax.run.run_dirs import in_multirun
from fashion_mnist_softmax.sweep_summary import SUMMARY_CSV, sweep_stopped, write_summary


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-shaped config group (``callbacks``, ``logger``)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def pruned_at(callbacks: list[L.Callback]) -> int | None:
    """The epoch after which its search pruned the run that has these callbacks; None if it did not."""
    return next((c.pruned_at for c in callbacks if isinstance(c, ReportToTrial) and c.pruned_at), None)


def tested_checkpoint(trainer: L.Trainer, test_ckpt: str) -> str | None:
    """The checkpoint that ``test_ckpt`` names: the best by ``val/acc``, the last, or a file of its own; None under
    ``trainer.fast_dev_run``, which saves none: its model is tested as it is."""
    if trainer.fast_dev_run:
        return None
    if test_ckpt not in ("best", "last"):
        return test_ckpt
    monitoring = test_ckpt == "best"
    checkpoint = next(c for c in trainer.checkpoint_callbacks if (c.monitor is not None) == monitoring)
    path = checkpoint.best_model_path if monitoring else checkpoint.format_checkpoint_name({})
    if not path:
        raise UserError(
            f"There is no best checkpoint to test: training stopped at step {trainer.global_step}, before its "
            f"first validation (trainer.max_steps or trainer.check_val_every_n_epoch can do that), so no "
            f"checkpoint was chosen by {VAL_ACC}. Use test_ckpt=last to test the final model."
        )
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.impl`` on ``cfg.data`` (unless ``cfg.train`` is false: ``cfg.ckpt_path`` is tested as it is), test
    the checkpoint named by ``cfg.test_ckpt`` (unless ``cfg.test`` is false), return the metrics.

    A job of a search whose pruner stopped it (:mod:`~fashion_mnist_softmax.run.pruning`) is not tested."""
    console.quiet()
    run_dir = Path(cfg.paths.output_dir)
    callbacks = instantiate_all(cfg.get("callbacks"))  # conf/callbacks/always.yaml: what every run has
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_all(cfg.get("logger")),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,  # conf/callbacks/default.yaml lists the parameters instead
    )
    if distributed.must_start_ranks(trainer):
        return distributed.start_ranks(cfg, trainer)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.impl)
    if trainer.is_global_zero:
        print(f"{model.name} softmax regression, run dir {run_dir}")
    hparams = OmegaConf.to_container(cfg, resolve=True)
    summary = epoch_summary(trainer)
    resumed = load_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if resumed is not None:  # in its own dir (run/run_dirs.py), a run finds its own checkpoints there
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # in a new dir, the best checkpoint is chosen among the new dir's: what docs/errors.md says of such a resume
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    record = (resumed or {}).get("callbacks", {}).get(EpochSummary.__qualname__)  # none in a weights-only one
    trained = len(record["history"]) if record else 0
    if not cfg.train or trained >= cfg.trainer.max_epochs:
        if cfg.train:
            print(
                paragraph(
                    f"Nothing left to train: {cfg.ckpt_path} has finished {trained} epochs, and trainer.max_epochs="
                    f"{cfg.trainer.max_epochs}. Testing it as it is; raise trainer.max_epochs to train it further."
                )
            )
        if record:
            summary.load_state_dict(record)
        test_ckpt = os.path.abspath(cfg.ckpt_path)  # as metrics.json names every tested checkpoint
    else:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        except SystemExit:  # Ctrl-C or SIGTERM: SaveOnInterrupt saved last.ckpt
            try:
                if trainer.interrupted and trainer.is_global_zero:  # and Lightning finished the loggers
                    metrics = run_metrics(model.name, cfg.seed, summary.history, hparams, INTERRUPTED)
                    _interrupted(trainer, run_dir, metrics)
            finally:
                for held in (c for c in trainer.callbacks if isinstance(c, HeldInterrupt)):
                    held.release()
            raise
        if epoch := pruned_at(trainer.callbacks):
            if trainer.is_global_zero:  # its search stopped it: untested
                print(f"pruned by its search after epoch {epoch}: not tested")
            return _finish(trainer, run_dir, run_metrics(model.name, cfg.seed, summary.history, hparams, PRUNED))
        if not cfg.test:
            return _finish(trainer, run_dir, run_metrics(model.name, cfg.seed, summary.history, hparams))
        test_ckpt = tested_checkpoint(trainer, cfg.test_ckpt)
    history = list(summary.history)  # testing a checkpoint restores the callback states saved in it
    trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True, verbose=False)
    tested = stage_metrics(trainer, "test")
    if trainer.is_global_zero:
        print(test_line(tested))
    metrics = run_metrics(model.name, cfg.seed, history, hparams, tested=tested, test_ckpt=test_ckpt)
    return _finish(trainer, run_dir, metrics)


def _interrupted(trainer: L.Trainer, run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write the stopped run's ``metrics.json`` (its finished epochs, and how to go on: its ``resume`` command, kept
    there too for a console that is gone), and say how to resume it."""
    stopped = f"Interrupted after {len(metrics['history'])} of {trainer.max_epochs} epochs"
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
    saved = saver is not None and saver.saved  # not before training started: Lightning stopped it, nothing saved
    search = search_goes_on() if saved else None
    if saved:
        metrics["resume"] = search or resume_command(run_dir, saver.path)
    write_json_atomic(run_dir / METRICS_FILE, metrics)  # first: the console may be gone (a pipe's reader stopped)
    if search:
        print(paragraph(f"{stopped}: saved {saver.path}. {search}"))
    elif saved:
        print(f"{stopped}: saved {saver.path}. Resume with:\n  {metrics['resume']}")
    else:
        print(f"{stopped}.")
    sweep_stopped(f" at job {HydraConfig.get().job.num}" if in_multirun() else "")


def _finish(trainer: L.Trainer, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """End the run (on rank 0): its loggers and its ``metrics.json``; return the metrics."""
    if trainer.is_global_zero:
        end_run(run_dir, trainer.loggers, metrics)
        if not in_multirun() and (run_dir.parent / SUMMARY_CSV).is_file():  # a sweep's job, resumed on its own
            write_summary(run_dir.parent)
        print(f"metrics: {run_dir / METRICS_FILE}")
        if (run_dir / "checkpoints").is_dir():  # a finished run resumed with nothing left to train writes none
            print(f"checkpoints: {run_dir / 'checkpoints'}")
    return metrics
