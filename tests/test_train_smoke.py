"""train.py end to end on synthetic data: the run directory and its metrics.json."""

import json

from conftest import run_script


def test_train_py_subprocess_writes_run_dir(tiny_train_args, tmp_path):
    result = run_script("train.py", *tiny_train_args, "impl=scratch")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["impl"] == "scratch"
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["test/acc"] > 0.5
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / ".hydra" / "config.yaml").is_file()
    assert "epoch 1, loss " in result.stdout
