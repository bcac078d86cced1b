"""Test a saved checkpoint again: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from fashion_mnist_softmax import console
from fashion_mnist_softmax.checkpoints import load_model
from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule
from fashion_mnist_softmax.files import write_json_atomic
from fashion_mnist_softmax.run.figures import Figures
from fashion_mnist_softmax.run.metrics import METRICS_FILE, TEST_ACC, TEST_LOSS
from fashion_mnist_softmax.run.progress import EpochProgressBar
from fashion_mnist_softmax.run.record import stage_metrics, test_line


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path``; write the metrics and the test figures; return the metrics.

    The model and its preprocessing come from the checkpoint; ``cfg.data`` only says where the data is.
    """
    console.quiet()
    model, data_state = load_model(cfg.ckpt_path)
    datamodule: FashionMNISTDataModule = instantiate(cfg.data)
    datamodule.load_state_dict(data_state)
    out_dir = Path(cfg.paths.output_dir)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[Figures(out_dir / "figures"), EpochProgressBar(show_test=True)],
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    tested = stage_metrics(trainer, "test")
    metrics = {
        "impl": model.name,
        "ckpt_path": str(cfg.ckpt_path),
        TEST_ACC: tested[TEST_ACC],
        TEST_LOSS: tested[TEST_LOSS],
    }
    if trainer.is_global_zero:
        write_json_atomic(out_dir / METRICS_FILE, metrics)
        print(f"{test_line(tested)}\nmetrics: {out_dir / METRICS_FILE}")
    return metrics
