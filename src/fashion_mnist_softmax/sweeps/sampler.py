"""Optuna searches that resume with new trials (``conf/hydra/sweeper/sampler/resumable_tpe.yaml``)."""

from __future__ import annotations

from typing import Any

import optuna


def trials_stored(storage: str | None, study_name: str | None) -> int:
    """How many trials a stored study holds; 0 for a new or in-memory study."""
    if not storage or not study_name:
        return 0
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def tpe_sampler(seed: int, storage: str | None = None, study_name: str | None = None, **kwargs: Any):
    """A TPE sampler seeded with ``seed`` plus the trials already stored, so that a resumed study draws new ones."""
    return optuna.samplers.TPESampler(seed=seed + trials_stored(storage, study_name), **kwargs)
