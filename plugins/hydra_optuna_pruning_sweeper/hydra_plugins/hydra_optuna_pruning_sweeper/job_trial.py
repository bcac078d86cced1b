"""How a job reaches its Optuna trial: :func:`trial`, for any task function, in any launcher's process.

The sweeper tells each job its trial through the job's environment (``hydra.job.env_set``, which every launcher
applies around the task): the study's name and storage, the trial's number and the study's pruner. A job in the
sweeper's own process reaches the study through :data:`STUDIES`, an in-memory one too.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Optuna loads when a job asks for its trial
    import optuna

ENV = "HYDRA_OPTUNA_TRIAL"
STUDIES: dict[str, Any] = {}  # the storage of each study that a sweeper runs in this process, by study name


def env_override(study_name: str, storage: str | None, number: int, pruner: dict[str, Any] | None) -> str:
    """The override that tells a job its trial, in Hydra's override syntax."""
    told = json.dumps({"study_name": study_name, "storage": storage, "number": number, "pruner": pruner})
    return f"+hydra.job.env_set.{ENV}='" + told.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial() -> optuna.trial.Trial | None:
    """The Optuna trial of the job that calls it, in a search of ``hydra/sweeper=optuna``; None outside one, and in
    a search without a pruner whose in-memory study is in another process.

    A job reports to it and stops when its study's pruner says so::

        for epoch in range(epochs):
            ...
            if (t := trial()) is not None:
                t.report(accuracy, epoch)
                if t.should_prune():
                    raise optuna.TrialPruned()
    """
    told = os.environ.get(ENV)
    if not told:
        return None
    import optuna
    from hydra.utils import instantiate

    job = json.loads(told)
    name = job["study_name"]
    storage = STUDIES.get(name) or (optuna.storages.get_storage(job["storage"]) if job["storage"] else None)
    if storage is None and not job["pruner"]:  # nothing waits for its reports
        return None
    if storage is None:
        raise RuntimeError(
            f"This job cannot reach its trial: study {name} is held in memory by a sweeper in another process. "
            f"Give the search a storage, e.g. hydra.sweeper.storage=sqlite:///optuna.db."
        )
    pruner = instantiate(job["pruner"]) if job["pruner"] else None
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), job["number"])
    return optuna.trial.Trial(study, trial_id)
