"""Pruning in a plain training loop: ``python example/pruning.py -m``.

Gradient descent on (w - 3)², with a learning rate that the search draws. After each step the job reports its
loss to its trial, and stops when the study's pruner says that the loss is worse than the other trials' were at
that step: the trial ends PRUNED, and the search goes on with the next one.
"""

import hydra
import optuna
from omegaconf import DictConfig

from hydra_plugins.hydra_optuna_pruning_sweeper import trial


@hydra.main(version_base=None, config_path="pruning-conf", config_name="config")
def descend(cfg: DictConfig) -> float:
    job_trial = trial()  # None outside a search
    w = 0.0
    for step in range(cfg.steps):
        w -= cfg.lr * 2 * (w - 3)
        loss = (w - 3) ** 2
        if job_trial is not None:
            job_trial.report(loss, step)
            if job_trial.should_prune():
                raise optuna.TrialPruned(f"loss {loss:.3g} after step {step}")
    return loss


if __name__ == "__main__":
    descend()
