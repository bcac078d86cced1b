"""Train softmax regression on Fashion-MNIST: ``python train.py impl=scratch experiment=d2l``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fashion_mnist_softmax.run.failures import command_line_errors, friendly_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@command_line_errors
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float:
    """The returned ``val/acc_best`` is the objective of Optuna searches; a pruned job raises ``optuna.TrialPruned``."""
    from fashion_mnist_softmax.run.pruning import objective
    from fashion_mnist_softmax.run.training import train  # torch and Lightning load once the config passed its checks

    return objective(train(cfg))


if __name__ == "__main__":
    main()
