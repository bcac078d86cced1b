"""A foreign Hydra app for the tests: it returns ``cfg.returns`` (x unless told otherwise: a word, a list), or
fails with ``fail=true``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="app")
def main(cfg: DictConfig) -> object:
    if cfg.fail:
        raise RuntimeError(f"the job failed at x={cfg.x}")
    return cfg.returns


if __name__ == "__main__":
    main()
