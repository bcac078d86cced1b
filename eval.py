"""Test a saved checkpoint on the test set: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fashion_mnist_softmax.run import metrics
from fashion_mnist_softmax.run.failures import command_line_errors, friendly_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@command_line_errors
@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@friendly_errors
def main(cfg: DictConfig) -> float:
    from fashion_mnist_softmax.run.evaluation import evaluate  # torch loads once the config passed its checks

    return evaluate(cfg)[metrics.TEST_ACC]


if __name__ == "__main__":
    main()
