"""``hydra/launcher=fused``: every job of a fused sweep ends as if it had run alone, on the synthetic data."""

from __future__ import annotations

import csv
import itertools
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.models.scratch import init_weights
from fashion_mnist_softmax.run.evaluation import evaluate
from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import (
    CONFUSION,
    CURVES,
    INTERRUPTED,
    METRICS_FILE,
    PREDICTIONS,
    SAMPLES,
    STATUS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_EPOCH_TIME,
    TRAIN_LOSS,
    TRAIN_LOSS_STEP,
    TRAIN_LR,
    TRAIN_THROUGHPUT,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_LOSS,
    WEIGHTS,
    read_metrics,
)
from fashion_mnist_softmax.run.prediction import predict
from fashion_mnist_softmax.run.training import train
from fashion_mnist_softmax.sweep_summary import SUMMARY_CSV, SUMMARY_MD
from hydra_plugins.fashion_mnist_fused_launcher import _groups as fused_jobs
from hydra_plugins.fashion_mnist_fused_launcher._core import _picklable_failure
from hydra_plugins.fashion_mnist_fused_launcher._groups import why_not_fused
from hydra_plugins.fashion_mnist_fused_launcher._population import FusedDataModule, FusedSGD, FusedSoftmaxRegression

from helpers import NOT_A_TEST, ROOT, events_dir, run_script, tiny_overrides
from logger_stores import Logged, mlflow_runs, wandb_run

FIGURES = (SAMPLES, WEIGHTS, CURVES, CONFUSION, PREDICTIONS)

# 32 jobs: impl x lr x momentum x weight decay x seed, at learning rates where training is stable (README)
GRID = {
    "impl": ("scratch", "concise"),
    "optim.lr": ("0.01", "0.05"),
    "optim.momentum": ("0.0", "0.5"),
    "optim.weight_decay": ("0.0", "0.001"),
    "seed": ("1", "2"),
}


@pytest.fixture(scope="module")
def fused(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], object]:
    """The sweep dir of a fused multirun over GRID, its common overrides and the train.py result."""
    tmp = tmp_path_factory.mktemp("fused")
    common = [o for o in tiny_overrides(fake_archives, tmp / "data", tmp) if not o.startswith("paths.output_dir")]
    sweep = [f"{key}={','.join(values)}" for key, values in GRID.items()]
    result = run_script("train.py", "-m", "hydra/launcher=fused", *common, f"paths.log_dir={tmp / 'logs'}", *sweep)
    (sweep_dir,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    return sweep_dir, common, result


def test_every_fused_job_equals_its_lone_run(fused, tiny_cfg, tmp_path):
    sweep_dir, _, result = fused
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching 32 jobs as 1 fused group of 32" in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith(
        f"][HYDRA] 32 jobs (32 ok) in {sweep_dir}; summary: {sweep_dir}/summary.md"
    )
    jobs = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    assert len(jobs) == 32
    for job, values in zip(jobs, itertools.product(*GRID.values()), strict=True):
        overrides = [f"{key}={value}" for key, value in zip(GRID, values, strict=True)]
        assert OmegaConf.load(job / ".hydra" / "overrides.yaml")[-len(overrides) :] == overrides
        alone = train(tiny_cfg(*overrides, f"paths.output_dir={tmp_path / job.name}"))
        together = read_metrics(job)
        assert together.keys() == alone.keys() and together["impl"] == alone["impl"]
        for row_t, row_a in zip(together["history"], alone["history"], strict=True):
            for key in (TRAIN_LOSS, VAL_LOSS):
                assert row_t[key] == pytest.approx(row_a[key], abs=1e-4), (job.name, key)
            for key in (TRAIN_ACC, VAL_ACC):
                assert row_t[key] == pytest.approx(row_a[key], abs=0.002), (job.name, key)
        assert together[TEST_ACC] == pytest.approx(alone[TEST_ACC], abs=0.002)
        assert together[TEST_LOSS] == pytest.approx(alone[TEST_LOSS], abs=1e-4)
        assert (job / "checkpoints" / "last.ckpt").is_file() and len(list((job / "checkpoints").glob("*.ckpt"))) == 2
        last = {
            run: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
            for run, d in (("t", job), ("a", tmp_path / job.name))
        }
        assert last["t"]["hyper_parameters"] == last["a"]["hyper_parameters"], job.name  # its own lr, momentum...
        assert list(events_dir(job).glob("events.out.tfevents.*"))
    assert len((sweep_dir / SUMMARY_CSV).read_text().splitlines()) == 33


def test_eval_of_a_fused_checkpoint_gives_its_jobs_test_accuracy(fused, compose_cfg, fake_archives, tmp_path):
    sweep_dir, common, _ = fused
    for job in ("0", "31"):  # a scratch job and a concise one
        metrics = read_metrics(sweep_dir / job)
        data = [o for o in common if o.startswith("data.")]
        cfg = compose_cfg([f"ckpt_path={metrics['test_ckpt']}", f"paths.output_dir={tmp_path / job}", *data], "eval")
        evaluated = evaluate(cfg)
        assert evaluated["impl"] == metrics["impl"]
        assert evaluated[TEST_ACC] == pytest.approx(metrics[TEST_ACC], abs=1e-6)
        assert evaluated[TEST_LOSS] == pytest.approx(metrics[TEST_LOSS], abs=1e-5)
    # eval.py's jobs under the fused launcher: each evaluates alone, as under the basic launcher
    ckpts = ",".join(read_metrics(sweep_dir / job)["test_ckpt"] for job in ("0", "31"))
    sweep = tmp_path / "eval_sweep"
    data = [o for o in common if o.startswith("data.")]
    result = run_script(
        "eval.py", "-m", "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", f"ckpt_path={ckpts}", *data
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "job 0 alone: not a job of train.py; job 1 alone: not a job of train.py" in result.stdout
    for job, fused_job in (("0", "0"), ("1", "31")):
        assert read_metrics(sweep / job)[TEST_ACC] == pytest.approx(read_metrics(sweep_dir / fused_job)[TEST_ACC])


def test_a_diverging_member_fails_alone(fake_archives, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    args = ["-m", "hydra/launcher=fused", *common, f"paths.log_dir={tmp_path / 'logs'}", "optim.lr=1e30,0.05"]
    result = run_script("train.py", *args, "seed=1,2", "logger=csv", "trainer.log_every_n_steps=1")
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "Launching 4 jobs as 1 fused group of 4" in result.stdout + result.stderr
    assert "the loss diverged" in " ".join(result.stderr.split())
    for job in ("0", "1"):  # lr 1e30
        assert (sweep / job / ERROR_FILE).read_text().startswith("Training stopped: the loss diverged")
        assert not (sweep / job / METRICS_FILE).exists()
        # its loggers are finalized, as a lone run's are when it fails: what it logged before it diverged (its first
        # step's loss; it diverged at its second) is written
        with open(sweep / job / "csv" / "metrics.csv") as f:
            rows = [(row["step"], float(row[TRAIN_LOSS_STEP])) for row in csv.DictReader(f)]
        assert len(rows) == 1 and rows[0][0] == "0" and 0 < rows[0][1] < 1e6
    for job in ("2", "3"):
        assert read_metrics(sweep / job)[TEST_ACC] > 0.5
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 14
        with open(sweep / job / "csv" / "metrics.csv") as f:
            assert {row["epoch"] for row in csv.DictReader(f)} == {"0", "1", ""}  # "": the test row


def test_a_group_whose_every_member_diverges_fails_each_as_its_lone_run_does(fake_archives, tmp_path):
    """Once no member trains, the group trains nothing more: each job fails with its own paragraph."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=fused", *common, f"hydra.sweep.dir={sweep}", "optim.lr=1e30", "seed=1,2"]
    result = run_script("train.py", *args)
    console = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Traceback" not in console and "grad_fn" not in console, console[-3000:]
    assert "Launching 2 jobs as 1 fused group of 2" in console
    for job in ("0", "1"):
        assert (sweep / job / ERROR_FILE).read_text().startswith("Training stopped: the loss diverged")


def logged(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar and image a job logged to TensorBoard: (step, value) per tag, images as (step, width)."""
    events = EventAccumulator(str(events_dir(job_dir)), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    found = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return found | {f"image {tag}": [(e.step, e.width) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def assert_same_scalars(together: Logged, alone: Logged, store: str) -> None:
    """The same tags at the same steps with the same values (within the fused arithmetic's tolerance)."""
    timed = (TRAIN_EPOCH_TIME, TRAIN_THROUGHPUT, "epoch")  # clocks, and the epoch Lightning adds to each write
    assert together.keys() == alone.keys() and {TRAIN_LOSS_STEP, TRAIN_LR} <= alone.keys(), store
    assert {VAL_ACC, TEST_ACC} <= alone.keys(), store
    for tag in alone.keys() - set(timed):
        assert [s for s, _ in together[tag]] == [s for s, _ in alone[tag]], (store, tag)
        assert [v for _, v in together[tag]] == pytest.approx([v for _, v in alone[tag]], abs=1e-4), (store, tag)


def job_name(job_dir: Path) -> str:
    """A sweep's job as MLflow and W&B name it: its overrides, as Hydra joins them, but the loggers'."""
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    name = ",".join(sorted(o for o in overrides if not o.startswith("logger=")))
    assert "optim.lr=" in name and "seed=2" in name
    return name


def test_a_fused_job_logs_and_draws_what_its_lone_run_does(fake_archives, tiny_cfg, tmp_path, capfd):
    """To every logger: TensorBoard, MLflow's sqlite store and W&B offline, combined as logger=[...] combines them."""
    loggers, logs = "logger=[tensorboard,mlflow,wandb]", tmp_path / "logs"
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    common = [o for o in common if o != "callbacks=none"] + ["callbacks=inspection", loggers]
    args = ["-m", "hydra/launcher=fused", *common, f"paths.log_dir={logs}", "optim.lr=0.05,0.1"]
    result = run_script("train.py", *args, "seed=2", env={**NOT_A_TEST, "XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "config" / "mlflow").exists(), "MLflow's telemetry started"
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    alone_dir = tmp_path / "alone"
    capfd.readouterr()
    train(
        tiny_cfg(
            "callbacks=inspection",
            "optim.lr=0.1",
            "seed=2",
            loggers,
            f"paths.log_dir={logs}",
            f"paths.output_dir={alone_dir}",
        )
    )
    for said in (result.stdout + result.stderr, "".join(capfd.readouterr())):  # settings.quiet: no W&B summary
        assert "wandb: Run history" not in said
    assert_same_scalars(logged(sweep / "1"), logged(alone_dir), "tensorboard")
    assert str(events_dir(sweep / "1").relative_to(sweep / "1" / "tensorboard")) == job_name(sweep / "1")

    runs = mlflow_runs(logs / "mlflow.db")
    assert len(runs) == 3 and {run["status"] for run in runs.values()} == {"FINISHED"}
    together, alone = runs[str(sweep / "1")], runs[str(alone_dir)]
    named = {job: job_name(sweep / job) for job in ("0", "1")}  # a job by its overrides, a lone run by its dir
    assert [runs[str(sweep / job)]["name"] for job in named] == list(named.values()) and alone["name"] == "alone"
    assert_same_scalars(together["metrics"], alone["metrics"], "mlflow")
    assert together["params"] == alone["params"] and {"lr", "optimizer/lr", "impl"} <= alone["params"].keys()
    assert together["artifacts"] == alone["artifacts"] == sorted(f"{name}.png" for name in FIGURES)

    together, alone = wandb_run(sweep / "1"), wandb_run(alone_dir)
    assert (together["name"], alone["name"]) == (named["1"], "alone")
    assert_same_scalars(together["metrics"], alone["metrics"], "wandb")
    assert together["config"] == alone["config"] and {"lr", "optimizer", "impl"} <= alone["config"]
    assert together["images"] == alone["images"] and set(alone["images"]) == set(FIGURES)
    assert together["exit_code"] == alone["exit_code"] == 0
    for name in FIGURES:
        pixels = [np.asarray(Image.open(d / "figures" / f"{name}.png")) for d in (sweep / "1", alone_dir)]
        assert pixels[0].shape == pixels[1].shape and np.abs(pixels[0].astype(int) - pixels[1]).max() <= 2, name


def test_optuna_batches_train_fused_and_the_study_gets_each_jobs_value(fake_archives, tmp_path):
    # batch size, epochs and normalize fixed on the command line: each batch of trials differs only in lr,
    # weight decay and momentum, so it trains as one group under the cosine schedule of hparams_search=optuna
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "data.normalize=false"]
    search += [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=fused", "hydra/launcher=fused"]
    result = run_script("train.py", "-m", *common, f"paths.log_dir={tmp_path / 'logs'}", *search)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Launching 2 jobs as 1 fused group of 2") == 2
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    study = optuna.load_study(study_name="fused", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for trial in study.trials:
        metrics = read_metrics(sweep / str(trial.number))
        assert trial.value == pytest.approx(metrics[VAL_ACC_BEST])
        assert metrics["hparams"]["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])


def test_jobs_that_cannot_fuse_run_alone_and_say_why(fake_archives, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    args = ["-m", "hydra/launcher=fused", *common, f"paths.log_dir={tmp_path / 'logs'}", "optim=sgd,adam"]
    result = run_script("train.py", *args, "impl=concise", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Launching 2 jobs as 1 fused group of 1; job 1 alone: the optimizer torch.optim.Adam is not SGD" in output
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert [read_metrics(sweep / job)[TEST_ACC] > 0.5 for job in ("0", "1")] == [True, True]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_fused_sweep_on_a_gpu_ends_where_it_ends_on_the_cpu(fake_archives, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweeps = {}
    for accelerator in ("cpu", "gpu"):
        logs = tmp_path / accelerator
        args = ["-m", "hydra/launcher=fused", *common, f"paths.log_dir={logs}", f"trainer.accelerator={accelerator}"]
        result = run_script("train.py", *args, "optim.lr=0.05,0.1", "seed=1,2")
        assert result.returncode == 0, result.stderr[-3000:]
        (sweeps[accelerator],) = (logs / "train" / "multiruns").iterdir()
    for job in ("0", "1", "2", "3"):
        cpu, gpu = (read_metrics(sweeps[a] / job) for a in ("cpu", "gpu"))
        assert gpu[TEST_ACC] == pytest.approx(cpu[TEST_ACC], abs=0.002)
        assert gpu[TEST_LOSS] == pytest.approx(cpu[TEST_LOSS], abs=1e-4)
        state = torch.load(sweeps["gpu"] / job / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert all(t.device.type == "cpu" for t in state["state_dict"].values())


def test_members_with_their_own_shuffle_seed_see_their_lone_runs_batches(fake_archives, tiny_cfg, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    args = ["-m", "hydra/launcher=fused", *common, f"paths.log_dir={tmp_path / 'logs'}", "seed=1"]
    result = run_script("train.py", *args, "data.shuffle_seed=4,3")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job, shuffle_seed in (("0", 4), ("1", 3)):
        alone = train(tiny_cfg("seed=1", f"data.shuffle_seed={shuffle_seed}", f"paths.output_dir={tmp_path / job}"))
        for row_t, row_a in zip(read_metrics(sweep / job)["history"], alone["history"], strict=True):
            assert row_t[TRAIN_LOSS] == pytest.approx(row_a[TRAIN_LOSS], abs=1e-4)


def test_a_fused_group_under_a_scheduler_takes_its_lone_runs_steps(fake_archives, tiny_cfg, tmp_path):
    """The population makes its scheduler as a lone model makes its own, and its factor scales every member's lr."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    schedule = ["scheduler=cosine", "trainer.max_epochs=3"]  # the lr at 1, 0.75 and 0.25 times optim.lr
    args = ["-m", "hydra/launcher=fused", *common, *schedule, f"paths.log_dir={tmp_path / 'logs'}"]
    result = run_script("train.py", *args, "optim.lr=0.05,0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching 2 jobs as 1 fused group of 2" in result.stdout + result.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job, lr in (("0", "0.05"), ("1", "0.2")):
        alone = train(tiny_cfg(*schedule, f"optim.lr={lr}", f"paths.output_dir={tmp_path / job}"))
        for row_t, row_a in zip(read_metrics(sweep / job)["history"], alone["history"], strict=True):
            assert row_t[TRAIN_LOSS] == pytest.approx(row_a[TRAIN_LOSS], abs=1e-4), (job, row_t["epoch"])
            assert row_t[VAL_ACC] == pytest.approx(row_a[VAL_ACC], abs=0.002), (job, row_t["epoch"])


def population(seeds: list[int], shuffle_seeds: list[int], lrs: list[float], **kwargs) -> FusedSoftmaxRegression:
    """Members drawn from ``seeds`` as their lone models draw their init, training with ``lrs``."""
    inits = []
    for seed in seeds:
        L.seed_everything(seed, verbose=False)
        inits.append((init_weights(784, 10), torch.zeros(10)))
    return FusedSoftmaxRegression(inits, [{"lr": lr} for lr in lrs], shuffle_seeds, None, [1e6] * len(seeds), **kwargs)


def test_a_diverged_member_is_named_at_its_first_bad_batch_when_losses_are_read_in_batches(tiny_cfg):
    """check_every=4 is the accelerator's path (the losses read every few steps), run on the CPU: the member
    that diverged trains on with a NaN loss until it is read, and that reaches no other member."""
    data = {k: v for k, v in OmegaConf.to_container(tiny_cfg().data).items() if not k.startswith("_")}
    modules = {}
    for every in (1, 4):
        module = population([1, 1], [7, 7], [1e38, 0.05], check_every=every)
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
        trainer.fit(module, datamodule=FusedDataModule([7], **data))
        assert trainer.global_step == 14 and list(module.failures) == [0] and module.alive.tolist() == [False, True]
        assert re.search(r"epoch 1, batch 2: loss nan\.", module.failures[0]), module.failures[0]
        modules[every] = module
    # the same steps for the other member, whose products run narrower once the diverged member left (at batch 2 or
    # when read at batch 4): equal up to the summation order of a matrix product of another width
    for a, b in ((modules[1].W[:, 1], modules[4].W[:, 1]), (modules[1].b[1], modules[4].b[1])):
        assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=0, atol=1e-6)


def test_a_population_of_equal_blocks_takes_the_steps_that_a_product_per_shuffle_seed_takes():
    """Every member training and as many for each shuffle seed: one batched product, whose losses, metrics and
    gradients are those of one product per shuffle seed (the path of blocks of other sizes, or members that left)."""
    torch.manual_seed(0)
    images, labels = torch.rand(3, 32, 1, 28, 28), torch.randint(0, 10, (3, 32))
    k = 6
    results = []
    for path in ("_batched", "_blockwise"):
        module = population(list(range(k)), [1, 1, 2, 2, 5, 5], [0.1] * k)
        losses, accuracies = getattr(module, path)(images, labels)
        losses.sum().backward()
        results.append((losses, accuracies, module.W.grad, module.b.grad))
    (losses, *rest), (losses_w, *rest_w) = results
    assert losses.shape == (k,) and losses.requires_grad
    for ours, theirs in zip([losses, *rest], [losses_w, *rest_w], strict=True):
        torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(theirs))


def test_each_member_of_the_fused_sgd_takes_torchs_sgd_steps_with_options_shared_or_its_own():
    """Options every member shares are numbers, the others tensors: either way each member's steps are
    torch.optim.SGD's with its own options, under a scheduler's factor."""
    shared = {"lr": [0.1, 0.1], "momentum": [0.5, 0.5], "weight_decay": [1e-3, 1e-3]}
    own = {"lr": [0.1, 0.3], "momentum": [0.5, 0.9], "weight_decay": [1e-3, 0.0]}
    for options in (shared, own):
        torch.manual_seed(0)
        W, b = torch.nn.Parameter(torch.randn(4, 2, 3)), torch.nn.Parameter(torch.randn(2, 3))
        alone = [[torch.nn.Parameter(p[..., k, :].detach().clone())] for p in (W, b) for k in range(2)]
        tensors = [torch.tensor(options[key]) for key in ("lr", "momentum", "weight_decay")]
        fused = FusedSGD([W, b], *tensors)
        references = [
            torch.optim.SGD(params, **{key: options[key][k % 2] for key in options}) for k, params in enumerate(alone)
        ]
        for step in range(4):
            if step == 2:  # a scheduler's factor, the same for every member
                fused.param_groups[0]["lr"] = 0.5
                for k, reference in enumerate(references):
                    reference.param_groups[0]["lr"] = 0.5 * options["lr"][k % 2]
            target = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(step))
            for opt in (fused, *references):
                opt.zero_grad()
            ((W - target) ** 2).sum().backward()
            (b**2).sum().backward()
            for (p,), k in zip(alone, range(4), strict=True):
                goal = target[:, k] if k < 2 else 0
                ((p - goal) ** 2).sum().backward()
            for opt in (fused, *references):
                opt.step()
        for k in range(2):
            torch.testing.assert_close(W[:, k], alone[k][0])
            torch.testing.assert_close(b[k], alone[2 + k][0])


def test_a_machine_without_the_devices_a_group_asks_for_fails_each_of_its_jobs(tiny_cfg, monkeypatch):
    """Each member's config was checked as it was composed; the machine, once for the group."""
    refused = UserError("trainer.accelerator=gpu asks for a device this machine does not have")

    def no_gpu(trainer):
        raise refused

    monkeypatch.setattr(fused_jobs, "check_machine", no_gpu)
    cfgs = [OmegaConf.to_container(tiny_cfg(f"seed={seed}"), resolve=True) for seed in (1, 2)]
    assert fused_jobs.train_group(cfgs, [{}, {}]) == [refused, refused]


def test_devices_auto_fuses_on_one_gpu_and_runs_alone_on_several(tiny_cfg, monkeypatch):
    cfg = OmegaConf.to_container(tiny_cfg("trainer.devices=auto", "trainer.accelerator=auto"), resolve=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert why_not_fused(cfg) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # Lightning would start DDP on both
    assert why_not_fused(cfg) == "DDP: a fused group trains in one process"
    cfg["trainer"]["accelerator"] = "cpu"
    assert why_not_fused(cfg) is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ([], None),
        (["optim.nesterov=false", "optim.dampening=0", "optim.maximize=false"], None),  # the defaults: fused
        (["optim.momentum=0.9", "optim.nesterov=true"], "the optimizer option nesterov=true, which the fused"),
        (["optim.dampening=0.5", "optim.maximize=true"], "the optimizer options dampening=0.5, maximize=true,"),
    ],
)
def test_sgd_options_the_fused_sgd_does_not_implement_run_alone(tiny_cfg, overrides, reason):
    cfg = OmegaConf.to_container(tiny_cfg(*overrides), resolve=True)
    found = why_not_fused(cfg)
    if reason is None:
        assert found is None
    else:
        assert found.startswith(reason) and found.endswith("which the fused SGD does not implement"), found


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("trainer.fast_dev_run=true", "a step or batch limit"),
        ("test=false", "test_ckpt names a checkpoint of its own, or test=false"),
    ],
)
def test_a_dry_run_and_an_untested_run_run_alone(tiny_cfg, override, reason):
    """What a fused group would do otherwise than their lone runs: train whole epochs, test every member."""
    assert why_not_fused(OmegaConf.to_container(tiny_cfg(override), resolve=True)) == reason


def test_a_member_keeps_the_checkpoints_its_own_checkpoint_callback_keeps(fake_archives, tiny_cfg, tmp_path):
    """The member's ModelCheckpoint decides, as in its lone run: here the two lowest val/loss of three epochs."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    kept = ["+callbacks.best_checkpoint.save_top_k=2", "callbacks.best_checkpoint.mode=min", "trainer.max_epochs=3"]
    kept += ["callbacks.best_checkpoint.monitor=val/loss"]
    args = ["-m", "hydra/launcher=fused", *common, *kept, f"paths.log_dir={tmp_path / 'logs'}", "optim.lr=0.05,2.0"]
    result = run_script("train.py", *args, "test_ckpt=last")
    assert result.returncode == 0 and "Launching 2 jobs as 1 fused group of 2" in result.stdout + result.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job, lr in (("0", "0.05"), ("1", "2.0")):
        train(tiny_cfg(*kept, f"optim.lr={lr}", "test_ckpt=last", f"paths.output_dir={tmp_path / job}"))
        names = [sorted(p.name for p in (d / "checkpoints").iterdir()) for d in (sweep / job, tmp_path / job)]
        assert names[0] == names[1] and len(names[0]) == 3, names


def test_a_job_checkpointing_within_epochs_runs_alone(tiny_cfg):
    found = why_not_fused(OmegaConf.to_container(tiny_cfg("+callbacks.best_checkpoint.every_n_train_steps=5")))
    assert found == "a checkpoint saved within epochs: a fused group runs its members' callbacks at epochs' ends"


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "64-true"])
def test_a_job_in_another_precision_runs_alone(tiny_cfg, precision):
    found = why_not_fused(OmegaConf.to_container(tiny_cfg(f"trainer.precision={precision}"), resolve=True))
    assert found == f"the precision {precision}: a fused group trains in 32-true"


def test_a_fused_checkpoint_is_evaluated_and_predicted_with_but_not_resumed(fused, compose_cfg, tmp_path):
    sweep_dir, common, _ = fused
    job = sweep_dir / "0"
    ckpt = job / "checkpoints" / "last.ckpt"
    before = {p: p.read_bytes() for p in job.rglob("*") if p.is_file()}
    logs = tmp_path / "logs"
    resume = [f"paths.log_dir={logs}", "impl=scratch", f"ckpt_path={ckpt}", "trainer.max_epochs=3"]  # job 0: scratch
    result = run_script("train.py", *common, *resume)
    console = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in console, console[-3000:]
    error = " ".join(result.stderr[result.stderr.index("Error: ") :].split())
    assert error.startswith(f"Error: The checkpoint {ckpt} holds the weights only, as the fused launcher")
    assert "but not resumed. Train anew, or resume a checkpoint written by a lone train.py run." in error
    assert "epoch 1," not in console and not logs.exists(), "a refused run writes nothing"
    assert {p: p.read_bytes() for p in job.rglob("*") if p.is_file()} == before
    data = [o for o in common if o.startswith("data.")]
    overrides = [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'predict'}", "indices=[0,1]", *data]
    (tmp_path / "predict").mkdir()
    assert len(predict(compose_cfg(overrides, "predict"))) == 2  # eval.py: the test above


def test_a_fused_sweeps_job_dirs_are_a_basic_sweeps(fake_archives, tmp_path):
    """The same two jobs under both launchers: the same files in each job dir (TensorBoard event files named apart
    by host and time; a lone run opens a second one to test), and the same ``.hydra/``, composed once under the
    fused launcher, but for the launcher and the dirs."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweeps = {}
    for launcher in ("basic", "fused"):
        sweep = tmp_path / launcher
        args = ["-m", *common, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", "impl=scratch,concise"]
        result = run_script("train.py", *args, "trainer.max_epochs=1", f"paths.log_dir={tmp_path / 'logs'}")
        assert result.returncode == 0, result.stderr[-3000:]
        sweeps[launcher] = sweep

    def layout(job: Path) -> set[str]:
        return {re.sub(r"events\.out\.tfevents\..*", "events", str(p.relative_to(job))) for p in job.rglob("*")}

    def written(job: Path, name: str) -> str:
        text = (job / ".hydra" / name).read_text().replace(str(job.parent), "<sweep>")
        return re.sub(r"(?m)^(  launcher:\n(    .*\n)*)|hydra/launcher[=:] ?\w+", "", text)

    for job in ("0", "1"):
        basic, fused = sweeps["basic"] / job, sweeps["fused"] / job
        assert layout(basic) == layout(fused)
        for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
            assert written(basic, name) == written(fused, name), name
    assert layout(sweeps["basic"]) == layout(sweeps["fused"])


def test_fused_groups_run_as_submitit_jobs_write_what_they_write_in_the_launchers_process(fake_archives, tmp_path):
    """Two groups (two batch sizes), trained in the launcher's process, then each as a job of submitit's local
    executor: each job's metrics.json and checkpoints are the same, and the sweeper gets every job's value."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    common = [o for o in common if not o.startswith(("data.batch_size=", "trainer.max_epochs="))]
    grid = ["impl=scratch,concise", "data.batch_size=32,64", "trainer.max_epochs=1", "hydra/launcher=fused"]
    executors = {"here": [], "submitit": ["hydra.launcher.executor=local", "hydra.launcher.timeout_min=5"]}
    for name, executor in executors.items():
        args = ["-m", *common, *grid, f"hydra.sweep.dir={tmp_path / name}", f"paths.log_dir={tmp_path / 'logs'}"]
        result = run_script("train.py", *args, *executor)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Launching 4 jobs as 2 fused groups of 2 + 2" in result.stdout
    assert "Submitted the groups to submitit's local executor as jobs" in result.stdout
    assert list((tmp_path / "submitit" / ".submitit").iterdir()), "submitit's own files"
    for job in ("0", "1", "2", "3"):
        here, there = read_metrics(tmp_path / "here" / job), read_metrics(tmp_path / "submitit" / job)
        assert [row["epoch"] for row in there["history"]] == [1]
        for a, b in zip(here["history"], there["history"], strict=True):
            assert {k: v for k, v in a.items() if k != "time_s"} == pytest.approx(
                {k: v for k, v in b.items() if k != "time_s"}, abs=1e-6
            )
        assert there[TEST_ACC] == pytest.approx(here[TEST_ACC], abs=1e-6)
        assert there["hparams"]["data"] == here["hparams"]["data"] and there["impl"] == here["impl"]
        names = [sorted(p.name for p in (tmp_path / d / job / "checkpoints").iterdir()) for d in ("here", "submitit")]
        assert names[0] == names[1]
    summary = (tmp_path / "submitit" / SUMMARY_CSV).read_text()
    assert summary.count(",ok,") == 4


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("hydra.launcher.executor=slrum", "hydra.launcher.executor=slrum is not valid: it must be local or slurm"),
        ("hydra.launcher.executor=slurm", "hydra.launcher.executor=slurm cannot start:"),  # no srun here
    ],
)
def test_an_executor_that_cannot_run_the_groups_is_refused_before_any_job_dir(fake_archives, tmp_path, setting, said):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = ["-m", *common, "hydra/launcher=fused", setting, f"hydra.sweep.dir={sweep}", "seed=1,2"]
    result = run_script("train.py", *args, env={"PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert said in " ".join(result.stderr.split()), result.stderr[-2000:]
    assert not [d for d in sweep.iterdir() if d.is_dir()], "a job dir was made"


def test_a_job_that_cannot_be_composed_stops_a_fused_sweep_before_any_job_dir(fake_archives, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = ["-m", *common, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", "optim=sgd,nosuch"]
    result = run_script("train.py", *args)
    assert result.returncode != 0 and "nosuch" in result.stderr
    assert not sweep.exists() or not [d for d in sweep.iterdir() if d.is_dir()], "a job dir was made"


def test_an_override_that_does_not_resolve_stops_a_fused_sweep_before_any_job_dir(fake_archives, tmp_path):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = ["-m", *common, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", "data.batch_size=${nope}", "seed=1,2"]
    result = run_script("train.py", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.batch_size does not resolve" in result.stderr, result.stderr[-2000:]
    assert not sweep.exists() or not [d for d in sweep.iterdir() if d.is_dir()], "a job dir was made"


@pytest.mark.parametrize(("override", "failed", "said"), [("optim.lr=0.1,-1", ["2", "3"], "optim.lr=-1 is not valid")])
def test_a_job_whose_config_is_refused_runs_alone_and_fails_as_under_the_basic_launcher(
    fake_archives, tmp_path, override, failed, said
):
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = ["-m", *common, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", override, "seed=1,2"]
    result = run_script("train.py", *args)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "alone: its config does not resolve, or is refused" in result.stdout + result.stderr
    jobs = 4 if "," in override else 2
    assert f"{len(failed)} of {jobs} jobs failed" in result.stderr and "Traceback" not in result.stderr
    for job in map(str, range(jobs)):
        error = sweep / job / "error.txt"
        assert error.exists() == (job in failed) and (job not in failed or said in error.read_text())
        assert (sweep / job / "metrics.json").exists() == (job not in failed)


def test_a_composition_worker_that_dies_stops_the_sweep_instead_of_leaving_the_others_waiting(tmp_path):
    script = """if True:
        import os, sys
        from hydra_plugins.fashion_mnist_fused_launcher import _core
        assert "torch" not in sys.modules  # else the jobs are composed in this process, with no worker to die

        def compose(launcher, overrides, idx):
            if idx == 1:
                os._exit(9)
            return idx

        _core._compose = compose
        _core._start_jobs(None, [(idx, []) for idx in range(4)])()
    """
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "stopped before it was done (exit code 9" in " ".join(result.stderr.split())


class _TwoArguments(Exception):
    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"{what} in {where}")


def test_what_stops_a_job_in_a_worker_reaches_the_launcher_whole():
    try:
        raise ConfigCompositionException() from InterpolationKeyError("Interpolation key 'nope' not found")
    except ConfigCompositionException as e:
        num, error = _picklable_failure(3, e)
    assert num == 3 and "'nope' not found" in str(pickle.loads(pickle.dumps(error)))  # Hydra's cause, kept
    _, error = _picklable_failure(0, _TwoArguments("a", "b"))  # pickled, it cannot be made again
    assert str(pickle.loads(pickle.dumps(error))) == "_TwoArguments: a in b"


def test_a_sigint_stops_a_fused_sweep_with_each_jobs_finished_epochs_and_a_summary(fake_archives, tmp_path):
    """Every job stops at the same epoch, between two steps or once each has its epoch's row and checkpoints."""
    common = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if not o.startswith("paths.")]
    sweep = tmp_path / "sweep"
    args = [*common, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", "seed=1,2", "trainer.max_epochs=100"]
    command = [sys.executable, str(ROOT / "train.py"), "-m", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        said, deadline = [], time.monotonic() + 120
        while not (said and said[-1].startswith("fused epoch 1:")):
            assert select.select([proc.stdout], [], [], deadline - time.monotonic())[0], said
            said.append(proc.stdout.readline().strip())
            assert said[-1] or proc.poll() is None, said
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    stopped = re.search(r"Interrupted after (\d+) of 100 epochs: the 2 jobs of this fused group", " ".join(out.split()))
    assert stopped, out[-2000:]
    epochs = int(stopped.group(1))
    for job in ("0", "1"):
        metrics = read_metrics(sweep / job)
        assert metrics[STATUS] == INTERRUPTED and [row["epoch"] for row in metrics["history"]] == [
            *range(1, epochs + 1)
        ]
    assert out.splitlines()[-1] == f"The sweep stopped: see {sweep / SUMMARY_MD}"
    rows = (sweep / SUMMARY_CSV).read_text().splitlines()
    assert len(rows) == 3 and all(",interrupted," in row for row in rows[1:])
