"""eval.py and predict.py on a real train.py run over synthetic data."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fashion_mnist_softmax.checkpoints import DATA_STATE, check_checkpoint
from fashion_mnist_softmax.config.checks import check_config
from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule
from fashion_mnist_softmax.data.images import read_image, to_fashion_mnist
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.models import models
from fashion_mnist_softmax.run.evaluation import evaluate
from fashion_mnist_softmax.run.metrics import CONFUSION, METRICS_FILE, PREDICTIONS, TEST_ACC, TEST_LOSS, read_metrics
from fashion_mnist_softmax.run.prediction import PREDICTIONS_FILE, predict

from helpers import assert_no_empty_files, run_script, tiny_overrides

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(fake_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch scratch run made by train.py on standardised images, with checkpoints and metrics.json."""
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    args = [*tiny_overrides(fake_archives, root / "data", run), f"hydra.run.dir={run}", "impl=scratch"]
    result = run_script("train.py", *args, "data.normalize=true", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture
def lone_checkpoint(trained: Path, tmp_path: Path) -> Path:
    """The checkpoint the run tested, copied alone into an empty folder."""
    folder = tmp_path / "lone"
    folder.mkdir()
    return Path(shutil.copy(read_metrics(trained)["test_ckpt"], folder))


def data_args(fake_archives: Path, tmp_path: Path) -> list[str]:
    """Where the test set is: a fresh data root, filled from the synthetic archives."""
    return [
        f"data.root={tmp_path / 'data'}",
        f"data.search_dirs=[{fake_archives}]",
        "data.download=false",
        "data.expected_sizes=null",
    ]


def product_photo(path: Path, size: tuple[int, int] = (120, 80)) -> Path:
    """A dark, off-centre object on a white background, like a catalogue photo."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([10, 20, 50, 70], fill=(30, 30, 30))
    image.save(path)
    return path


def test_a_lone_checkpoint_gives_its_runs_test_accuracy(trained, lone_checkpoint, fake_archives, tmp_path):
    """The run standardised its images: only the checkpoint can say with which mean and std."""
    run_metrics = read_metrics(trained)
    assert run_metrics["hparams"]["data"]["normalize"] is True
    out = tmp_path / "eval"
    args = [f"ckpt_path={lone_checkpoint}", f"hydra.run.dir={out}", *data_args(fake_archives, tmp_path)]
    result = run_script("eval.py", *args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = read_metrics(out)
    assert evaluated["impl"] == "scratch"
    assert evaluated[TEST_ACC] == run_metrics[TEST_ACC]
    assert evaluated[TEST_LOSS] == pytest.approx(run_metrics[TEST_LOSS], abs=1e-6)
    for name in (CONFUSION, PREDICTIONS):
        assert Image.open(out / "figures" / f"{name}.png").size[0] > 100
    assert "Traceback" not in result.stderr
    acc, loss = evaluated[TEST_ACC], evaluated[TEST_LOSS]  # printed rounded, kept whole
    assert result.stdout.splitlines()[-2:] == [
        f"test acc {acc:.4f}, test loss {loss:.4f}",
        f"metrics: {out / METRICS_FILE}",
    ]
    assert_no_empty_files(out)


def test_nothing_written_later_changes_what_eval_computes(trained, compose_cfg, fake_archives, tmp_path):
    run_metrics = read_metrics(trained)
    config = trained / ".hydra" / "config.yaml"
    original = config.read_bytes()
    try:
        config.write_text("data: {normalize: false, root: /nowhere}\n")  # what a later, refused run could leave
        overrides = [f"ckpt_path={run_metrics['test_ckpt']}", f"paths.output_dir={tmp_path}", "data.normalize=false"]
        cfg = compose_cfg([*overrides, *data_args(fake_archives, tmp_path)], config_name="eval")
        assert evaluate(cfg)[TEST_ACC] == run_metrics[TEST_ACC]
    finally:
        config.write_bytes(original)


@pytest.mark.parametrize("app", ["eval", "predict"])
def test_a_checkpoint_naming_foreign_code_is_refused(trained, compose_cfg, tmp_path, app):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["model_class"] = "subprocess.Popen"
    forged = tmp_path / "forged.ckpt"
    torch.save(ckpt, forged)
    overrides = [f"ckpt_path={forged}", f"paths.output_dir={tmp_path}", "indices=[0]"][: 3 if app == "predict" else 2]
    cfg = compose_cfg(overrides, config_name=app)
    with pytest.raises(UserError, match=r"names the model class 'subprocess.Popen', which is not one of this project"):
        (evaluate if app == "eval" else predict)(cfg)
    assert not list(tmp_path.glob("*.json"))


def test_a_checkpoint_without_its_description_is_refused(trained, compose_cfg, tmp_path):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    del ckpt["FashionMNISTDataModule"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    cfg = compose_cfg([f"ckpt_path={old}", f"paths.output_dir={tmp_path}"], config_name="eval")
    with pytest.raises(UserError, match=r"is not a checkpoint of this project: it lacks"):
        evaluate(cfg)


def test_a_weights_only_checkpoint_is_evaluated_but_not_resumed(trained, compose_cfg, fake_archives, tmp_path):
    """What the fused launcher writes: a lone run's checkpoint without what Lightning needs to resume."""
    scratch = "fashion_mnist_softmax.models.scratch.ScratchSoftmaxRegression"
    tested = read_metrics(trained)["test_ckpt"]
    check_checkpoint(tested, scratch, resume=True)  # a lone run's checkpoint resumes
    ckpt = torch.load(tested, weights_only=True)
    for key in ("callbacks", "optimizer_states", "loops", "lr_schedulers"):
        ckpt.pop(key, None)
    weights_only = tmp_path / "weights_only.ckpt"
    torch.save(ckpt, weights_only)
    check_checkpoint(weights_only)  # eval.py and predict.py
    with pytest.raises(UserError, match=r"holds the weights only, .* but not resumed\. Train anew, or resume"):
        check_checkpoint(weights_only, scratch, resume=True)
    overrides = [f"ckpt_path={weights_only}", f"paths.output_dir={tmp_path}", *data_args(fake_archives, tmp_path)]
    assert evaluate(compose_cfg(overrides, config_name="eval"))[TEST_ACC] == read_metrics(trained)[TEST_ACC]


def test_eval_py_with_a_missing_checkpoint_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "last.ckpt"
    result = run_script("eval.py", f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'eval'}", env=ONE_THREAD)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"No checkpoint at {missing}" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("script", "override", "said"),
    [
        ("eval.py", "impl=concise", "Could not override 'impl'. No match in the defaults list. Fix it on the command"),
        ("predict.py", "topk=3", "topk is not a setting of this run: did you mean top_k? Fix it on the command line."),
    ],
)
def test_a_command_line_hydra_cannot_compose_ends_in_one_paragraph(tmp_path, script, override, said):
    result = run_script(script, "ckpt_path=x.ckpt", override, f"paths.log_dir={tmp_path}", env=ONE_THREAD)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.strip().startswith("Error: ")
    assert said in " ".join(result.stderr.split()) and "HYDRA_FULL_ERROR" not in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("folder", ["run dir", "checkpoints"])
def test_eval_py_given_a_folder_names_the_checkpoint_to_give(trained, tmp_path, folder):
    given = trained if folder == "run dir" else trained / "checkpoints"
    result = run_script("eval.py", f"ckpt_path={given}", f"hydra.run.dir={tmp_path / 'eval'}", env=ONE_THREAD)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert (
        f"ckpt_path={given} is a folder: give a checkpoint file in it, such as {trained}/checkpoints/last.ckpt." in said
    )


def test_eval_of_a_truncated_checkpoint_names_it(trained, compose_cfg, tmp_path):
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes()[:3000])
    cfg = compose_cfg([f"ckpt_path={truncated}", f"paths.output_dir={tmp_path}"], config_name="eval")
    with pytest.raises(UserError, match=re.escape(f"The checkpoint {truncated} cannot be loaded")):
        evaluate(cfg)


def test_predict_py_labels_images_and_test_indices(lone_checkpoint, fake_archives, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    product_photo(photos / "a.png")
    product_photo(photos / "b.jpg", size=(64, 96))
    (photos / "notes.txt").write_text("not an image, and skipped: only image suffixes are read from a folder")
    out = tmp_path / "predict"
    args = [f"ckpt_path={lone_checkpoint}", f"images=[{photos}]", "indices=[0,1,2]", f"hydra.run.dir={out}"]
    result = run_script("predict.py", *args, *data_args(fake_archives, tmp_path), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / PREDICTIONS_FILE).read_text())
    images = [str(photos / "a.png"), str(photos / "b.jpg")]
    assert [row["source"] for row in rows] == [*images, "test[0]", "test[1]", "test[2]"]
    for row in rows:
        probs = [p for _, p in row["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        line = f"{row['source']}" + (f" (true: {row['true']})" if "true" in row else "")
        assert line + f": {row['top'][0][0]} {probs[0]:.3f}" in result.stdout
    assert result.stdout.splitlines()[-1] == f"predictions: {out / PREDICTIONS_FILE}"
    assert_no_empty_files(out)
    indexed = rows[2:]
    assert all(row["true"] == row["top"][0][0] for row in indexed), "a trained model should get these right"


@pytest.mark.parametrize("problem", ["unreadable", "truncated png", "missing", "empty folder", "index"])
def test_predict_bad_input_is_named(trained, compose_cfg, fake_archives, tmp_path, problem):
    target = {
        "unreadable": tmp_path / "notes.png",
        "truncated png": tmp_path / "cut.png",
        "missing": tmp_path / "missing.png",
        "empty folder": tmp_path / "empty",
    }.get(problem)
    if problem == "unreadable":
        target.write_text("text with an image suffix")
    elif problem == "truncated png":
        target.write_bytes(product_photo(tmp_path / "whole.png").read_bytes()[:80])
    elif problem == "empty folder":
        target.mkdir()
    overrides = ["indices=[128]", *data_args(fake_archives, tmp_path)] if problem == "index" else [f"images=[{target}]"]
    ckpt = trained / "checkpoints" / "last.ckpt"
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}", *overrides], config_name="predict")
    with pytest.raises(UserError, match="out of range" if problem == "index" else re.escape(str(target))):
        predict(cfg)
    assert not (tmp_path / PREDICTIONS_FILE).exists()


def test_to_fashion_mnist_makes_a_light_centred_object_on_black():
    photo = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(photo).rectangle([10, 20, 50, 70], fill=(30, 30, 30))  # 41 wide, 51 tall, off centre
    pixels = to_fashion_mnist(photo)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8 and pixels.flags.writeable
    rows, cols = np.nonzero(pixels > 128)
    assert rows.min() == 0 and rows.max() == 27, "the longer side fills the frame"
    assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1, "the object is centred"
    assert pixels[:, 0].max() < 30 and pixels[:, -1].max() < 30, "the background is black"
    already_dark = Image.fromarray(255 - np.asarray(photo.convert("L")))
    assert np.abs(to_fashion_mnist(already_dark).astype(int) - pixels).max() <= 1, "light-on-dark is kept"


@pytest.mark.parametrize("pixels", [np.uint16, np.float32])
def test_to_fashion_mnist_stretches_16_bit_and_float_images(pixels):
    """``convert("L")`` clips such pixels at 255: the 16-bit picture came out all black."""
    picture = np.zeros((60, 40), dtype=np.uint8)
    picture[10:50, 5:30] = np.linspace(40, 255, 25).astype(np.uint8)
    eight_bit = to_fashion_mnist(Image.fromarray(picture))
    assert eight_bit.max() > 200
    deep = Image.fromarray(picture.astype(pixels) * (257 if pixels == np.uint16 else 1 / 255))
    assert deep.mode in ("I;16", "F")
    assert np.abs(to_fashion_mnist(deep).astype(int) - eight_bit).max() <= 1


@pytest.mark.parametrize("limit", [100, 500])
def test_an_image_too_large_to_decode_is_refused_before_its_pixels_are_read(tmp_path, monkeypatch, limit):
    """Pillow refuses more than twice its limit, and above it only warns, then reads the pixels: a 144-megapixel
    JPEG took 2.6 GB. Both are refused in one paragraph, from the file's header."""
    path = tmp_path / "huge.png"
    Image.new("L", (28, 28)).save(path)  # 784 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the pixels were read"))
    with warnings.catch_warnings(), pytest.raises(UserError, match=f"The image {path} is too large to read") as e:
        warnings.simplefilter("error")  # nor a warning on the console
        read_image(path)
    assert f"more than {limit:,} pixels" in e.value.message


def test_eval_on_several_devices_is_refused_before_it_starts(compose_cfg, tmp_path):
    cfg = compose_cfg(["ckpt_path=x.ckpt", f"paths.output_dir={tmp_path}", "trainer=ddp"], config_name="eval")
    with pytest.raises(UserError, match=r"eval\.py tests in one process on one device"):
        check_config(cfg, "eval")


@pytest.mark.parametrize("app", ["eval", "predict"])
def test_no_checkpoint_given_says_what_to_add(compose_cfg, tmp_path, app):
    cfg = compose_cfg([f"paths.output_dir={tmp_path}", "indices=[0]"][: 2 if app == "predict" else 1], config_name=app)
    with pytest.raises(UserError, match=r"No checkpoint given: add ckpt_path="):
        check_config(cfg, app)


def test_the_checkpoint_registry_is_every_classifier_of_the_models_package():
    scratch, concise = (
        f"fashion_mnist_softmax.{m}.{c}SoftmaxRegression" for m, c in (("scratch", "Scratch"), ("concise", "Concise"))
    )
    assert models() == {
        scratch.replace(".scratch", ".models.scratch"): "scratch",
        concise.replace(".concise", ".models.concise"): "concise",
        scratch: "scratch",  # as checkpoints of the first version name them
        concise: "concise",
    }
    assert FashionMNISTDataModule.__qualname__ == DATA_STATE  # where Lightning saves the DataModule's state
