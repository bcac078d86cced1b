"""`make bench` and the ladder on synthetic data, and the on-device data path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule, InMemoryFashionMNIST
from fashion_mnist_softmax.data.fashion_mnist import ensure_raw_files
from fashion_mnist_softmax.models.scratch import ScratchSoftmaxRegression

from helpers import ROOT, run_script

SGD = {"_target_": "fashion_mnist_softmax.models.scratch.SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_writes_json_and_table(fake_archives, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data-dir", str(fake_archives), "--out", str(out)]
    cmd += ["--epochs", "2", "--repeats", "1", "--impls", "concise", "--sweeps", "2", "--scales"]
    # the default callbacks' sweep is the same code with another config; make_scaled is tested below
    cmd += ["--sweep-callbacks", "none"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    results = json.loads((out / "bench.json").read_text())
    assert [r["name"] for r in results["rows"]] == [
        "seed pipeline (scratch)",
        "plain PyTorch loop (concise)",
        "bare LightningModule (concise)",
        "lightning-hydra-template-style module (concise)",
        "project (concise)",
    ]
    for r in results["rows"]:
        assert len(r["epochs_s"]) == 1 and len(r["epochs_s"][0]) == 2 and r["epoch_s"] == r["epochs_s"][0][1]
        assert r["fastest_epoch_s"] == r["epoch_s"]  # one epoch after the first: the fastest is the median
        assert r["images_per_s"] == pytest.approx(512 / r["epoch_s"])
        assert r["peak_rss_mb"] > 10 and r["process_s"] > r["epoch_s"]
    project = results["rows"][4]
    assert project["pass_s"] > 0
    assert project["vs_plain"] == pytest.approx(project["epoch_s"] / results["rows"][1]["epoch_s"])
    assert project["vs_bare"] == pytest.approx(project["fastest_epoch_s"] / results["rows"][2]["fastest_epoch_s"])
    assert project["vs_bare_median"] == pytest.approx(project["epoch_s"] / results["rows"][2]["epoch_s"])
    assert project["process_vs_seed"] == pytest.approx(project["process_s"] / results["rows"][0]["process_s"])
    assert project["vs_template"] == pytest.approx(project["epoch_s"] / results["rows"][3]["epoch_s"])
    assert results["scale"] == []
    assert set(results["targets"]) and all(isinstance(ok, bool) for ok in results["targets"].values())
    assert not list(out.glob("scale*x/"))  # the scaled copies are removed

    assert [(r["jobs"], r["callbacks"]) for r in results["sweeps"]] == [(2, "none")]
    for r in results["sweeps"]:
        assert r["ratio"] == pytest.approx(r["basic_s"] / r["fused_s"])
        assert r["joblib_ratio"] == pytest.approx(r["joblib_s"] / r["fused_s"]) and r["joblib_n_jobs"] >= 1
        assert r["plain_loop_job_s"] == results["rows"][1]["process_s"]
        assert r["agreement"]["jobs"] == 2 and r["agreement"]["within_tolerance_by_lr"] == {"0.1": [2, 2]}
        assert r["agreement"]["within_tolerance"] == 2 and r["agreement"]["max_loss_gap"] <= 1e-4
    sweep_dirs = sorted(d.name for d in (out / "sweeps").iterdir())
    assert sweep_dirs == ["2-basic-none", "2-fused-none", "2-joblib-none"]

    table = (out / "bench.md").read_text()
    assert table in result.stdout
    assert "| project (concise) |" in table
    targets = [line for line in table.splitlines() if line.startswith("- ")]
    assert any("project (concise): epoch <= the template-style module's" in line for line in targets)
    assert not any("bare LightningModule" in line for line in targets)  # the retired target against it
    assert "| 2 jobs | none |" in table and "2-job sweep, callbacks=none: fused per job" in table


def test_make_scaled_repeats_the_training_set(fake_archives, tmp_path):
    bench = load_bench()
    ensure_raw_files(tmp_path / "data", [str(fake_archives)], download=False)
    assert bench.make_scaled(tmp_path / "data", tmp_path / "scaled", 3) == 3 * 512
    dm = FashionMNISTDataModule(
        str(tmp_path / "scaled"), val_size=0, search_dirs=[], download=False, expected_sizes=None
    )
    dm.setup()
    images, labels = dm.train_set.images, dm.train_set.labels
    assert images.dtype == torch.uint8 and images.shape == (3 * 512, 28, 28)
    assert torch.equal(images[:512], images[1024:]) and torch.equal(labels[:512], labels[512:1024])
    assert len(dm.test_set) == 128


def test_batches_are_exact_on_any_device():
    """The on-device path on CPU: ``to`` moves the set, index tensors follow it, values stay x/255."""
    images, labels = torch.arange(10 * 28 * 28).remainder(256).to(torch.uint8).view(10, 28, 28), torch.arange(10)
    ds = InMemoryFashionMNIST(images, labels)
    index = torch.tensor([7, 2, 2])
    x, y = ds[index]
    assert x.shape == (3, 1, 28, 28) and torch.equal(y, labels[index])
    assert torch.equal(x, images[index].unsqueeze(1).float() / 255)  # the values of transforms.ToTensor()
    x1, y1 = ds[7]
    assert x1.shape == (1, 28, 28) and torch.equal(x1, x[0]) and int(y1) == 7

    assert ds.to(torch.device("meta")) is ds
    x, y = ds[index]
    assert x.device.type == y.device.type == "meta" and x.shape == (3, 1, 28, 28)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_keeps_the_data_on_the_device(tiny_cfg):
    from hydra.utils import instantiate

    cfg = tiny_cfg("trainer.accelerator=gpu", "trainer.max_epochs=1")
    dm, model = instantiate(cfg.data), instantiate(cfg.impl)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert dm.train_set.images.device.type == "cuda" and dm.train_set.images.dtype == torch.uint8
    assert dm.val_set.labels.device.type == "cuda"
    assert trainer.callback_metrics["train/acc"] > 0.3


def test_metrics_handed_over_once_per_epoch_cover_every_batch(tiny_cfg, tmp_path):
    """The metrics go to Lightning once per epoch, yet cover every batch: test/acc is the whole set's."""
    from fashion_mnist_softmax.run.training import train

    cfg = tiny_cfg("impl=scratch", "test_ckpt=last")
    metrics = train(cfg)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    model = ScratchSoftmaxRegression(SGD)
    model.load_state_dict(state)
    dm = FashionMNISTDataModule(cfg.data.root, val_size=64, search_dirs=[], download=False, expected_sizes=None)
    dm.setup()
    x, y = dm.test_set[torch.arange(len(dm.test_set))]
    with torch.no_grad():
        expected = (model(x).argmax(dim=1) == y).float().mean().item()
    assert metrics["test/acc"] == pytest.approx(expected, abs=1e-6)
    assert len(dm.test_set) > cfg.data.batch_size  # more than one batch went into it


def test_bench_refuses_a_folder_without_data(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data-dir", str(tmp_path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "no Fashion-MNIST archives" in result.stderr
    assert "Traceback" not in result.stderr


def test_ladder_prints_one_row_per_rung(fake_archives, tmp_path):
    ensure_raw_files(tmp_path, [str(fake_archives)], download=False)
    result = run_script("benchmarks/ladder.py", "--data-root", str(tmp_path), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and " s |" in line]
    assert [r[0].strip() for r in rows][:2] == ["plain PyTorch loop", "bare LightningModule, automatic optimization"]
    assert len(rows) == 6 and rows[1][3].strip() == "1.00 / 1.00"  # the bare module against itself
    assert all(0 < float(r[2].strip(" s")) <= float(r[1].strip(" s")) for r in rows)  # the fastest, the median
