"""A search space partly in Python: ``python example/custom-search-space-objective.py -m``. ``configure`` (named by
``hydra.sweeper.custom_search_space``) suggests ``z`` near the ``x`` that the trial drew, and a new key ``+w``."""

import hydra
from omegaconf import DictConfig
from optuna.trial import Trial


@hydra.main(version_base=None, config_path="custom-search-space", config_name="config")
def sphere_4d(cfg: DictConfig) -> float:
    return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2


def configure(cfg: DictConfig, trial: Trial) -> None:
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)  # +: w is not in the config, the override adds it


if __name__ == "__main__":
    sphere_4d()
