"""Test a saved checkpoint again: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.base import SoftmaxRegression
from fashion_mnist_softmax.checks import IMPLS, check_impl, given_ckpt_path, impl_name, load_checkpoint
from fashion_mnist_softmax.data import FashionMNISTDataModule
from fashion_mnist_softmax.inspection import Figures


def load_model(ckpt_path: str | Path, impl: str | None = None) -> SoftmaxRegression:
    """The model saved in a checkpoint, built from its own hyperparameters; ``impl``, if given, must match."""
    ckpt = load_checkpoint(ckpt_path)
    model = IMPLS[check_impl(ckpt, ckpt_path, impl)](**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def run_config_of(ckpt_path: str | Path) -> Path:
    """Where the training run that wrote ``<run>/checkpoints/x.ckpt`` keeps its config."""
    return Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"


def data_config(cfg: DictConfig) -> DictConfig:
    """The training run's data config, so that the test set is split and scaled as in training.

    ``data.*`` overrides given on this command line still win. Without the run's config (a
    checkpoint copied out of its run dir), this app's own ``data`` config is used.
    """
    run_config = run_config_of(cfg.ckpt_path)
    if not run_config.is_file():
        print(f"No training config at {run_config}: using this command's data settings.")
        return cfg.data
    run_cfg = OmegaConf.load(run_config)
    data = OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True))
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for override in given:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("data."):
            OmegaConf.update(data, key.removeprefix("data."), OmegaConf.select(cfg, key), force_add=True)
    return data


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` on the test set; write the metrics and the test figures; return the metrics."""
    model = load_model(given_ckpt_path(cfg), impl_name(cfg))
    datamodule: FashionMNISTDataModule = instantiate(data_config(cfg))
    figures = Figures(Path(cfg.paths.output_dir) / "figures")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[figures])
    tested = trainer.test(model, datamodule=datamodule)[0]
    metrics = {
        "impl": model.name,
        "ckpt_path": str(cfg.ckpt_path),
        m.TEST_ACC: tested[m.TEST_ACC],
        m.TEST_LOSS: tested[m.TEST_LOSS],
    }
    if trainer.is_global_zero:
        m.write_json_atomic(Path(cfg.paths.output_dir) / m.METRICS_FILE, metrics)
    return metrics
