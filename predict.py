"""Label images with a saved model: ``python predict.py ckpt_path=<run>/checkpoints/last.ckpt images=[a.png]``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fashion_mnist_softmax.run.failures import command_line_errors, friendly_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@command_line_errors
@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@friendly_errors
def main(cfg: DictConfig) -> None:
    from fashion_mnist_softmax.run.prediction import predict  # torch loads once the config passed its checks

    predict(cfg)


if __name__ == "__main__":
    main()
