"""train.py end to end on synthetic data: the run directory, its metrics.json, and what the console shows."""

import json
import re

import pytest

from fashion_mnist_softmax.run.metrics import read_metrics

from helpers import NOT_A_TEST, assert_no_empty_files, run_in_terminal, run_script
from logger_stores import mlflow_runs, wandb_run

NOISE = ("💡", "litlogger", "already configured with model summary", "LeafSpec", "FLOPs", "GPU available", "Traceback")


@pytest.mark.parametrize("callbacks", ["default", "none"])
def test_the_console_shows_the_run_and_nothing_else(tiny_train_args, tmp_path, callbacks):
    """With callbacks=default, to every logger: MLflow sends no usage data (it would keep an installation id in
    the user's config dir)."""
    loggers = "logger=[tensorboard,mlflow,wandb]" if callbacks == "default" else "logger=tensorboard"
    loggers += " tags=[baseline,lr-test]" if callbacks == "default" else ""
    config_home = tmp_path / "config"
    env = {**NOT_A_TEST, "XDG_CONFIG_HOME": str(config_home)}
    args = [
        *tiny_train_args,
        "impl=scratch",
        f"callbacks={callbacks}",
        *loggers.split(),
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    result = run_script("train.py", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (config_home / "mlflow").exists(), "MLflow's telemetry started"
    if callbacks == "default":  # named by its run dir, not by a name drawn from Python's random, seeded alike
        run = tmp_path / "run"
        assert mlflow_runs(tmp_path / "logs" / "mlflow.db")[str(run)]["name"] == run.name == wandb_run(run)["name"]
        assert wandb_run(run)["tags"] == ["baseline", "lr-test"]  # and in metrics.json, with the config
        assert read_metrics(run)["hparams"]["tags"] == ["baseline", "lr-test"]
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, noise
    run = tmp_path / "run"
    for line in ("epoch 1, loss ", "epoch 2, loss ", "test acc ", f"metrics: {run / 'metrics.json'}", f"run dir {run}"):
        assert line in console, line
    assert "it/s" not in console and "\r" not in console, "a bar in a pipe: each redraw a line"
    summary = "ScratchSoftmaxRegression: 7,850 parameters\n  W  784 × 10\n  b  10\n"
    assert (summary in console) == (callbacks == "default")
    assert_no_empty_files(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["impl"] == "scratch" and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["test/acc"] > 0.5
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("smoke", ["debug=quick", "trainer.fast_dev_run=true"])
def test_the_smoke_run_shows_its_one_epoch_and_nothing_else(tiny_train_args, smoke):
    args = [a for a in tiny_train_args if not a.startswith(("trainer.max_epochs", "trainer.log_every_n_steps"))]
    result = run_script("train.py", *args, smoke)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in (*NOISE, "logging interval", "fast_dev_run"):  # log_every_n_steps fits its two steps
        assert noise not in console, noise
    assert "epoch 1, loss " in console and "epoch 2," not in console


def test_on_a_terminal_the_bar_counts_epochs_as_the_epoch_lines_do(tiny_train_args):
    status, console = run_in_terminal("train.py", *tiny_train_args, "callbacks=default")
    assert status == 0, console[-3000:]
    assert "epoch 2/2: 100%" in console and "Epoch 0" not in console and "it/s" in console
    assert re.search(r"[\r\n]epoch 2, loss [^\r]*\r?\n", console), "the epoch line has a line of its own"
