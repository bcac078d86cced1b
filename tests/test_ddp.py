"""DDP on CPU with gloo, inside multiruns: every rank runs its job's config, metrics sync across ranks."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fashion_mnist_softmax.checkpoints import load_model
from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import METRICS_FILE, TEST_ACC, TEST_LOSS, read_metrics
from fashion_mnist_softmax.run.training import train
from fashion_mnist_softmax.sweep_summary import SUMMARY_CSV

from helpers import run_script, tiny_overrides
from sweep_runs import job_dirs, run_multirun

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _digests(stdout: str, job: Path) -> tuple[str, list[str]]:
    """The config fingerprint the job printed, and the ones its ranks printed."""
    (job_digest,) = re.findall(rf"ddp job {re.escape(str(job))}: 2 ranks on this node, config ([0-9a-f]{{16}})", stdout)
    rank_digests = re.findall(rf"ddp local rank \d of {re.escape(str(job))}: config ([0-9a-f]{{16}})", stdout)
    return job_digest, rank_digests


def _read_summary(sweep: Path) -> list[str]:
    return (sweep / SUMMARY_CSV).read_text().splitlines()[1:]


def _event_file_pids(job: Path) -> set[str]:
    return {p.name.split(".")[-2] for p in job.rglob("events.out.tfevents.*")}


def _test_in_one_process(job: Path) -> dict[str, float]:
    """Test the checkpoint that the DDP job tested, in this process on all test images."""
    metrics = read_metrics(job)
    model, data_state = load_model(metrics["test_ckpt"])
    datamodule = instantiate(OmegaConf.create(metrics["hparams"]).data)
    datamodule.load_state_dict(data_state)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, use_distributed_sampler=False
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


def test_ddp_multirun_with_synced_metrics(tmp_path: Path, fake_archives: Path) -> None:
    """The scratch model here; the concise one in the all-reduce test below."""
    sweep, result = run_multirun(tmp_path, fake_archives, *DDP, "impl=scratch")

    jobs = job_dirs(sweep)
    assert [read_metrics(j)["impl"] for j in jobs] == ["scratch"]
    assert "sync_dist" not in result.stdout + result.stderr  # every value logged is the same on each rank
    for job in jobs:
        job_digest, rank_digests = _digests(result.stdout, job)
        assert rank_digests == [job_digest, job_digest]
        assert len(_event_file_pids(job)) == 1  # only rank 0 writes event files
        metrics = read_metrics(job)
        single = _test_in_one_process(job)
        assert metrics[TEST_ACC] == single[TEST_ACC]
        assert abs(metrics[TEST_LOSS] - single[TEST_LOSS]) < 1e-5


def test_ddp_inside_an_optuna_sweep_on_parallel_joblib_workers_and_an_empty_data_root(
    tmp_path: Path, fake_archives: Path
) -> None:
    assert not (tmp_path / "data").exists()
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    sweep, result = run_multirun(
        tmp_path, fake_archives, *DDP, *search, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )

    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    digests = set()
    for job in jobs:
        job_digest, rank_digests = _digests(result.stdout, job)
        assert rank_digests == [job_digest, job_digest]
        digests.add(job_digest)
        sampled = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        ran = read_metrics(job)["hparams"]  # what rank 0 trained; the digests say every rank trained the same
        assert ran["optim"]["lr"] == float(sampled["optim.lr"])
        assert ran["optim"]["momentum"] == float(sampled["optim.momentum"])
    assert len(digests) == 2
    assert len(_read_summary(sweep)) == 2


def test_a_diverging_ddp_job_of_a_multirun_writes_its_reason_to_error_txt(tmp_path: Path, fake_archives: Path) -> None:
    """The ranks hand their paragraph to the job, which writes it to error.txt and the summary, and prints it.

    Either rank may diverge first; the launcher then stops the other one, rank 0 too (SIGTERM)."""
    tiny = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.output")]
    tiny = [o for o in tiny if not o.startswith("trainer.max_epochs=")]
    logs = tmp_path / "logs"
    result = run_script("train.py", "-m", *tiny, *DDP, "trainer.max_epochs=1", "optim.lr=1e30", f"paths.log_dir={logs}")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-4000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    (job,) = job_dirs(sweep)
    reason = (job / ERROR_FILE).read_text().strip()
    assert reason.startswith("Training stopped: the loss diverged") and "\n\n" not in reason, reason
    with open(sweep / SUMMARY_CSV, newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["status"] == "failed" and row["reason"] == reason
    assert not list(job.glob(".rank*")), "the ranks' hand-over files are gone"
    stderr = " ".join(result.stderr.split())
    assert "Job 0 failed: Training stopped: the loss diverged" in stderr, result.stderr[-4000:]
    assert "Error: Training stopped" not in stderr, "the ranks leave the paragraph to the job"


def test_multi_node_ddp_in_a_local_multirun_is_refused(tmp_path: Path, fake_archives: Path) -> None:
    tiny = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.output")]
    result = run_script("train.py", "-m", *tiny, *DDP, "trainer.num_nodes=2", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 2 and not (tmp_path / "logs").exists()
    assert "trainer.num_nodes=2 needs a launcher that starts the processes of every node" in " ".join(
        result.stderr.split()
    )
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "logs").rglob(METRICS_FILE))


def test_multi_node_ddp_in_a_single_run_is_refused_with_its_run_dir(tmp_path: Path, fake_archives: Path) -> None:
    """Neither torchrun nor SLURM started it, which only Lightning's look for a cluster tells: its run dir says why."""
    tiny = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.output")]
    result = run_script("train.py", *tiny, *DDP, "trainer.num_nodes=2", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = "trainer.num_nodes=2 needs a launcher that starts the processes of every node"
    assert said in " ".join(result.stderr.split())
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert said in " ".join((run / ERROR_FILE).read_text().split()) and not (run / METRICS_FILE).exists()


def test_ddp_all_reduces_every_sgd_step(tmp_path: Path, tiny_cfg) -> None:
    """2 ranks at batch 32 take the steps of one process at batch 64, whose minibatches are the union of
    the ranks' (the same shuffle): each rank's gradient is averaged with the other's at every step.
    This process is the job that starts the ranks."""
    weights = {}
    for name, extra in {"ddp": [*DDP, "data.batch_size=32"], "one": ["data.batch_size=64"]}.items():
        out = tmp_path / name
        train(tiny_cfg(f"paths.output_dir={out}", "impl=concise", *extra))
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2 * 7  # 448 training images: 7 steps of 64 images per epoch
        weights[name] = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert weights["ddp"].keys() == weights["one"].keys() and weights["one"]
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["ddp"][key], value, rtol=0, atol=1e-5)
