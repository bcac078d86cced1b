"""Samplers for searches that resume: a study run again draws new trials, not the ones it drew before."""

from __future__ import annotations

from typing import Any


def trials_stored(storage: str | None, study_name: str | None) -> int:
    """How many trials a stored study holds; 0 for a new or in-memory study."""
    import optuna  # Hydra imports this module when it looks for plugins: Optuna loads once a search starts

    if not storage or not study_name:
        return 0
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def tpe_sampler(seed: int, storage: str | None = None, study_name: str | None = None, **kwargs: Any) -> Any:
    """A TPE sampler seeded with ``seed`` plus the trials already stored, so that a resumed study draws new ones."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed + trials_stored(storage, study_name), **kwargs)
