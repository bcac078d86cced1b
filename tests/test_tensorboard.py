"""What a run writes for TensorBoard, read back by tensorboard itself: files, and a real server.

One real two-job multirun of train.py (``-m optim.lr=0.1,0.3``) on synthetic data serves every test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fashion_mnist_softmax.run.figures import Figures, flush_figures
from fashion_mnist_softmax.run.metrics import (
    CONFUSION,
    CURVES,
    HP_TEST_ACC,
    HP_TEST_LOSS,
    HP_VAL_ACC_BEST,
    PREDICTIONS,
    SAMPLES,
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

from helpers import events_dir, run_script, tiny_overrides

LRS = (0.1, 0.3)
FIGURES = (SAMPLES, PREDICTIONS, WEIGHTS, CONFUSION, CURVES)
SCALARS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, VAL_ACC_BEST, TEST_ACC, TEST_LOSS)
SCALARS += (TRAIN_LOSS_STEP, TRAIN_EPOCH_TIME, TRAIN_THROUGHPUT, TRAIN_LR)
HP_METRICS = (HP_VAL_ACC_BEST, HP_TEST_ACC, HP_TEST_LOSS)
HPARAMS = ("impl", "lr", "weight_decay", "momentum", "batch_size", "epochs", "normalize", "seed", "schedule")


@pytest.fixture(scope="module")
def multirun(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep dir of a finished two-job multirun; job ``i`` trained with ``LRS[i]``."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    overrides = [o for o in tiny_overrides(fake_archives, tmp / "data", tmp) if not o.startswith("paths.output_dir=")]
    result = run_script(
        "train.py",
        "-m",
        *overrides,
        "impl=scratch",
        "callbacks=inspection",
        "trainer.log_every_n_steps=2",
        f"optim.lr={','.join(map(str, LRS))}",
        f"hydra.sweep.dir={tmp / 'multirun'}",
        "+logger.images._target_=image_logger.ImageNames",  # beside the default loggers: its YAML, in one line
        "+logger.images.path=${paths.output_dir}/images.txt",
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "multirun"


def events(job_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(events_dir(job_dir)), size_guidance={"images": 0, "scalars": 0})
    return accumulator.Reload()


def test_each_job_has_its_own_scalars(multirun):
    for job in ("0", "1"):
        run = events(multirun / job)
        assert set(SCALARS) <= set(run.Tags()["scalars"])
        assert len(run.Scalars(TRAIN_LOSS_STEP)) == 14  # 14 steps an epoch, every 2nd logged
        assert [e.step for e in run.Scalars(TRAIN_ACC)] == [e.step for e in run.Scalars(TRAIN_EPOCH_TIME)]
        assert all(e.value > 0 for e in run.Scalars(TRAIN_THROUGHPUT))
        assert run.Scalars(TEST_ACC)[-1].value == pytest.approx(read_metrics(multirun / job)[TEST_ACC])
    assert events(multirun / "1").Scalars(TRAIN_LR)[0].value == pytest.approx(LRS[1])


def test_figures_are_logged_and_saved_as_pngs(multirun):
    run = events(multirun / "0")
    assert set(FIGURES) <= set(run.Tags()["images"])
    assert [e.step for e in run.Images(WEIGHTS)] == [1, 2]  # the slider shows the templates per epoch
    steps = {name: [e.step for e in run.Images(name)] for name in FIGURES if name != SAMPLES}
    assert all(found[-1] == 2 for found in steps.values()), steps  # every figure by epoch, the test's at the last
    for name in FIGURES:
        path = multirun / "0" / "figures" / f"{name}.png"
        png = Image.open(path)
        logged = run.Images(name)[-1]
        assert (logged.width, logged.height) == png.size
        assert logged.encoded_image_string == path.read_bytes()  # the figure's last drawing, encoded once
        assert min(png.size) >= 150


def test_a_logger_that_takes_images_as_wandb_does_gets_every_figure(multirun):
    logged = [line.split() for line in (multirun / "0" / "images.txt").read_text().splitlines()]
    assert {name for name, _ in logged} == set(FIGURES)
    assert [step for name, step in logged if name == WEIGHTS] == ["1", "2"]


def test_a_figure_published_after_the_writer_closed_is_logged(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tensorboard", name="", version="")
    logger.experiment.close()  # as a finished fit leaves it, before testing draws its figures
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    Figures(tmp_path / "figures").publish([logger], CONFUSION, image, step=3)
    flush_figures()
    logger.experiment.flush()
    assert [e.step for e in events(tmp_path).Images(CONFUSION)] == [3]


def test_hparams_hold_the_hyperparameters_and_final_metrics(multirun):
    for job, lr in zip(("0", "1"), LRS, strict=True):
        run = events(multirun / job)
        content = run.PluginTagToContent("hparams")
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {info.name.tag for info in experiment.metric_infos} == set(HP_METRICS)
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        assert set(hparams) == set(HPARAMS)
        assert hparams["lr"].number_value == pytest.approx(lr)
        assert hparams["impl"].string_value == "scratch"
        assert hparams["schedule"].string_value == "constant"
        saved = read_metrics(multirun / job)
        assert run.Scalars(HP_TEST_ACC)[-1].value == pytest.approx(saved[TEST_ACC])
        assert run.Scalars(HP_VAL_ACC_BEST)[-1].value == pytest.approx(saved[VAL_ACC_BEST])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def test_a_real_tensorboard_server_lists_one_run_per_job(multirun):
    port = free_port()
    base = f"http://127.0.0.1:{port}/data/plugin"
    command = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(multirun)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                tags = get_json(f"{base}/scalars/tags")
                if len(tags) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve both runs within 60 s"
            time.sleep(0.5)
        # each run named by its job's overrides, which tell it from the others
        names = {name.split("/")[0]: name for name in tags}
        assert sorted(names) == ["0", "1"] and all(
            name.startswith(f"{job}/tensorboard/") for job, name in names.items()
        )
        assert all(f"optim.lr={lr}" in names[str(job)] for job, lr in enumerate(LRS))
        assert all({TEST_ACC, TRAIN_LOSS_STEP} <= set(run_tags) for run_tags in tags.values())

        request = urllib.parse.quote(json.dumps({"experimentName": ""}))
        experiment = get_json(f"{base}/hparams/experiment?request={request}")
        assert {info["name"] for info in experiment["hparamInfos"]} == set(HPARAMS)
        assert {info["name"]["tag"] for info in experiment["metricInfos"]} == set(HP_METRICS)
        query = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "sliceSize": 10}
        groups = get_json(f"{base}/hparams/session_groups?request={urllib.parse.quote(json.dumps(query))}")
        groups = groups["sessionGroups"]
        assert sorted(group["hparams"]["lr"] for group in groups) == pytest.approx(LRS)
        assert all(len(group["metricValues"]) == len(HP_METRICS) for group in groups)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
