"""What the project relies on in other libraries beyond their documented API, each pinned where it is relied on: an
upgrade that changes one fails here, by name, instead of changing a run without a word.

Covered elsewhere: Hydra's ``BasicSweeper``, which ``hydra/sweeper=grid`` extends from ``hydra._internal`` (Hydra's
own sweeper suites, tests/test_grid_sweeper.py), and the exit status Lightning takes from
``SIGTERMException.code`` (tests/test_resume.py, a run stopped by SIGTERM), and the TensorBoard writer's
``_get_file_writer()``, which reopens the file a finished fit closed for the test's figures (tests/test_tensorboard.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import lightning as L
import pytest
from hydra.core.utils import JobReturn, JobStatus
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm

from fashion_mnist_softmax.run import failures, progress


def test_lightnings_tqdm_bar_has_what_the_epoch_bar_replaces_and_reads():
    """run/progress.py's EpochProgressBar overrides these of Lightning's TQDMProgressBar, makes Lightning's own
    Tqdm, and starts a resumed epoch's bar at the batches its loop has done."""
    for name in ("train_description", "train_progress_bar", "init_validation_tqdm", "init_test_tqdm"):
        assert hasattr(TQDMProgressBar, name), name
    assert issubclass(progress.Tqdm, tqdm) and progress.convert_inf(float("inf")) is None
    assert L.Trainer(logger=False).fit_loop.epoch_loop.batch_progress.current.completed == 0


def test_hydras_hint_that_the_refusals_leave_out_is_still_worded_so():
    """run/failures.py drops Hydra's advice to set HYDRA_FULL_ERROR from a message it rewords: a target that cannot
    be found, as Hydra says it."""
    script = "from hydra.utils import instantiate\ninstantiate({'_target_': 'no_such_module.Thing'})\n"
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stderr
    assert ", set env var HYDRA_FULL_ERROR=1 to see chained exception" in said
    assert "HYDRA_FULL_ERROR" not in failures._hydras_words(said.splitlines()[-1])


def test_a_failed_jobs_return_value_raises_its_error_and_a_replaced_status_reads_it():
    """hydra/sweeper=grid and the Optuna sweeper read a failed job's value with ``dataclasses.replace`` of its
    JobReturn, as COMPLETED; the fused launcher replaces its HydraContext's callbacks the same way."""
    error = ValueError("the job's own")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    with pytest.raises(ValueError) as raised:
        _ = failed.return_value
    assert raised.value is error
    assert dataclasses.replace(failed, status=JobStatus.COMPLETED).return_value is error
    from hydra.types import HydraContext

    assert "callbacks" in {f.name for f in dataclasses.fields(HydraContext)}
