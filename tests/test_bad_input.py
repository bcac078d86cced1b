"""Bad input to train.py ends in one clear paragraph, a non-zero exit, no traceback, and nothing lost."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fashion_mnist_softmax.config.checks import check_config, devices_asked
from fashion_mnist_softmax.data.fashion_mnist import raw_dir
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.run.guards import StopOnDivergedLoss
from fashion_mnist_softmax.run.metrics import VAL_ACC
from fashion_mnist_softmax.run.training import train

from helpers import ROOT, run_script

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def assert_clear_failure(result, *phrases: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr[-2000:]


@pytest.mark.parametrize(
    "override",
    [
        "data.batch_size=0",
        "data.batch_size=-32",
        "optim.lr=0",
        "optim.lr=-0.1",
        "data.val_size=-1",
        "data.val_size=60000",
        "trainer.max_epochs=0",
        "trainer.max_epochs=-1",
        "test=maybe",
        "test=1",
        "tags=dev",
        "tags=[1]",
    ],
)
def test_invalid_config_value_is_rejected_before_any_work(tiny_cfg, tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"^{key}=.* is not valid: it must be"):
        check_config(tiny_cfg(override), "train")
    assert not (tmp_path / "data").exists(), "the data was prepared before the config was checked"
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("overrides", [["train=false"], ["train=false", "test=false", "ckpt_path=x.ckpt"]])
def test_train_false_without_a_checkpoint_to_test_is_refused(tiny_cfg, overrides):
    with pytest.raises(UserError, match=r"^train=false tests the checkpoint ckpt_path as it is"):
        check_config(tiny_cfg(*overrides), "train")


def test_overfit_batches_is_refused_with_what_does_the_same(tiny_cfg):
    """Lightning's overfit_batches swaps the DataModule's batch sampler for one of single images."""
    with pytest.raises(UserError, match=r"^trainer.overfit_batches=2: .* trainer.limit_train_batches=2"):
        check_config(tiny_cfg("trainer.overfit_batches=2"), "train")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["impl=scratch", "optim=adam"], "impl=scratch trains with its hand-written SGD"),
        (["trainer.strategy=ddp_spawn"], "trainer.strategy='ddp_spawn' is not valid: it must be auto"),
    ],
)
def test_combinations_that_cannot_run_are_refused_before_any_work(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        check_config(tiny_cfg(*overrides), "train")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("+optim.lrr=0.1", "optim.lrr is not a setting of this run: did you mean optim.lr?"),
        ("optim.lrr=0.1", "optim.lrr is not a setting of this run: did you mean optim.lr?"),
        ("+trainer.max_epoch=3", "trainer.max_epoch is not a setting of this run: did you mean trainer.max_epochs?"),
        ("trainer.max_epoch=3", "trainer.max_epoch is not a setting of this run: did you mean trainer.max_epochs?"),
        ("optim=adam optim.betaz=[0.8,0.9]", "optim.betaz is not a setting of this run: did you mean optim.betas?"),
        ("impl=scrach", "impl=scrach is not a choice of impl: did you mean impl=scratch?"),
        ("optim.lr=[", "no viable alternative at input '['"),
        ("optim.lr=abc", "optim.lr='abc' is not valid: it must be a number greater than 0"),
        ("data.batch_size=1.5", "data.batch_size=1.5 is not valid: it must be a whole number of at least 1"),
        ("optim=adam +optim.momentum=0.9", "optim (torch.optim.Adam) takes lr, betas, eps, weight_decay"),
        ("-m +optim.lrr=0.1 seed=1,2", "optim.lrr is not a setting of this run: did you mean optim.lr?"),
        ("data.batch_size=${nope}", "data.batch_size does not resolve: Interpolation key 'nope' not found. Fix it"),
        ("trainer.devices=${nope}", "trainer.devices does not resolve: Interpolation key 'nope' not found. Fix it"),
        ("-m optim.lr=0.1,0.2 --cfg job", "-m and --cfg cannot be given together: a command does one of -m"),
        ("optim=adam +optim.betas=[0.8,0.99]", "+optim.betas adds a key, and optim.betas is one already: set it"),
        ("~optim.lr", "~optim.lr cannot remove optim.lr: every argument of torch.optim.SGD is a key, with its"),
    ],
)
def test_unknown_keys_and_wrong_types_end_in_one_paragraph_and_leave_no_run_dir(tmp_path, override, phrase):
    logs = tmp_path / "logs"
    result = run_script("train.py", *override.split(), f"paths.log_dir={logs}", env=ONE_THREAD)
    assert result.returncode == 2 and result.stdout == ""
    assert_clear_failure(result, phrase)
    assert result.stderr.strip().startswith("Error: ") and "HYDRA_FULL_ERROR" not in result.stderr
    assert "full_key" not in result.stderr  # OmegaConf's own lines on the node
    assert not logs.exists(), "a run dir was made for a config that cannot run"


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_key_that_no_job_of_a_sweep_has_ends_it_in_one_paragraph_before_any_job_dir(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra/launcher={launcher}", "optim.lrr=0.1,0.3", f"hydra.sweep.dir={sweep}"]
    result = run_script("train.py", *args, env=ONE_THREAD)
    assert result.returncode == 2 and "\nError: optim.lrr" in result.stderr
    assert_clear_failure(result, "optim.lrr is not a setting of this run: did you mean optim.lr?")
    assert "HYDRA_FULL_ERROR" not in result.stderr and "full_key" not in result.stderr
    assert not sweep.exists() or not [d for d in sweep.iterdir() if d.is_dir()], "a job dir was made"


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_sweep_with_a_choice_its_group_lacks_leaves_no_sweep_dir(tmp_path, launcher):
    logs = tmp_path / "logs"
    args = ["-m", f"hydra/launcher={launcher}", "impl=scratch,scrach", f"paths.log_dir={logs}"]
    result = run_script("train.py", *args, env=ONE_THREAD)
    assert_clear_failure(result, "impl=scrach is not a choice of impl: did you mean impl=scratch?")
    assert result.returncode == 2 and not [p for p in logs.rglob("*") if p.is_file() or p.name[0].isdigit()]


def test_what_fails_once_the_run_started_hydra_reports_as_it_always_does(tiny_train_args):
    """A mistake that only the run finds is not one of the command line's: Hydra's report, status 1."""
    result = run_script("train.py", *tiny_train_args, "callbacks=inspection", "callbacks.figures._target_=nope")
    assert result.returncode == 1 and "Error locating target 'nope'" in result.stderr
    assert "Fix it on the command line" not in result.stderr


def test_an_optuna_search_without_multirun_is_refused(tmp_path):
    """Started by an interpreter that the shell's python is not (make train in a shell without the venv), the
    refusal's command names that interpreter."""
    no_venv = {**ONE_THREAD, "PATH": "/usr/bin:/bin"}
    given = ["hparams_search=optuna", "trainer.max_epochs=3", f"paths.log_dir={tmp_path / 'logs'}"]
    result = run_script("train.py", *given, env=no_venv)
    assert result.returncode == 2 and not (tmp_path / "logs").exists()
    python = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    # the command as given, with -m
    assert_clear_failure(result, f"runs with -m: {python} train.py -m {' '.join(given)}. Without -m")


@pytest.mark.parametrize("setting", ["n_trials=0", "n_jobs=0"])
def test_an_optuna_search_of_no_trials_or_no_jobs_at_once_is_refused(tmp_path, setting):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.{setting}", f"hydra.sweep.dir={sweep}"]
    result = run_script("train.py", *args, env=ONE_THREAD, timeout=60)
    assert result.returncode == 2
    assert_clear_failure(result, f"hydra.sweeper.{setting} is not valid: it must be a whole number of at least 1.")
    assert not sweep.exists() or not [d for d in sweep.iterdir() if d.is_dir()], "a job dir was made"


@pytest.mark.parametrize(
    ("storage", "said"),
    [
        ("sqlite://logs/x.db", "is not a valid sqlite URL: a sqlite file is sqlite:///relative/path.db (three"),
        ("sqlite:///{tmp}/missing/x.db", "names a sqlite file in {tmp}/missing, a folder that does not exist."),
        ("postgresql://u@localhost/db", "needs its database's driver, the Python module psycopg, which is not"),
        ("sqlite:///{readme}", "cannot be opened as an Optuna storage: file is not a database."),
    ],
)
def test_an_optuna_storage_that_cannot_be_opened_is_refused_in_a_line_and_leaves_no_sweep_dir(tmp_path, storage, said):
    storage = storage.format(tmp=tmp_path, readme=ROOT / "README.md")
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=x"]
    result = run_script("train.py", *args, f"paths.log_dir={tmp_path / 'logs'}", env=ONE_THREAD, timeout=120)
    assert result.returncode == 2
    assert_clear_failure(result, f"hydra.sweeper.storage={storage} " + said.format(tmp=tmp_path))
    refused = " ".join(result.stderr.split())
    assert refused.count(storage) == 1 and "Error in call to target" not in refused
    assert refused.endswith("Fix it on the command line.") != storage.startswith("postgresql")  # a driver: installed
    assert list((tmp_path / "logs" / "train" / "multiruns").iterdir()) == []


def test_hydra_full_error_set_by_the_user_gets_hydras_own_report(tmp_path):
    result = run_script(
        "train.py", "optim.lrr=0.1", f"paths.log_dir={tmp_path}", env=ONE_THREAD | {"HYDRA_FULL_ERROR": "1"}
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "Could not override 'optim.lrr'" in result.stderr


NO_GPU = [] if torch.cuda.is_available() else ["trainer=gpu", "trainer.accelerator=cuda trainer.devices=2"]
MACHINE = [
    *NO_GPU,
    f"trainer.accelerator=gpu trainer.devices={torch.cuda.device_count() + 1}",
    "trainer.precision=8",
    "trainer.devices=two",
    *([] if torch.backends.mps.is_available() else ["trainer.accelerator=mps"]),
]


@pytest.mark.parametrize("overrides", MACHINE)
def test_trainer_settings_this_machine_cannot_run_are_refused_before_the_run_dir(tmp_path, overrides):
    logs = tmp_path / "logs"
    result = run_script("train.py", *overrides.split(), f"paths.log_dir={logs}", env=ONE_THREAD)
    assert result.returncode == 2 and result.stderr.strip().startswith("Error: trainer.")
    assert_clear_failure(result, "trainer.")
    assert "HYDRA_FULL_ERROR" not in result.stderr and not logs.exists()


@pytest.mark.parametrize(
    ("devices", "count"), [(1, 1), ("2", 2), ("auto", None), (-1, None), ([0, 1, 2], 3), ("0,1", 2)]
)
def test_the_devices_a_trainer_asks_for_are_counted_as_lightning_counts_them(devices, count):
    assert devices_asked(devices) == count


def test_unknown_impl_lists_the_choices(tiny_train_args):
    result = run_script("train.py", *tiny_train_args, "impl=softmax", env=ONE_THREAD)
    assert result.returncode == 2
    assert_clear_failure(result, "impl=softmax is not a choice of impl: the choices are concise, scratch.")


def test_no_data_anywhere_says_how_to_get_it(tiny_cfg, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as error:
        train(tiny_cfg(f"data.search_dirs=[{empty}]"))
    assert "train-images-idx3-ubyte.gz" in error.value.message


@pytest.mark.parametrize("app", ["train", "eval", "predict"])
def test_no_data_with_the_download_off_is_refused_before_the_run_dir(compose_cfg, fake_archives, tmp_path, app):
    """What the run would read is looked for before its dir exists, and nothing is made where it looked."""
    data = [f"data.root={tmp_path / 'nowhere'}", "data.download=false", "data.expected_sizes=null"]
    ckpt = f"ckpt_path={tmp_path / 'x.ckpt'}"
    given = {"train": [], "eval": [ckpt], "predict": [ckpt, "indices=0"]}
    cfg = compose_cfg([*data, f"data.search_dirs=[{tmp_path}]", *given[app]], config_name=app)
    with pytest.raises(UserError, match="the download is off") as error:
        check_config(cfg, app, machine=False)
    assert "train-images-idx3-ubyte" in error.value.message and not (tmp_path / "nowhere").exists()
    found = compose_cfg([*data, f"data.search_dirs=[{fake_archives}]", *given[app]], config_name=app)
    with pytest.raises(UserError, match=r"No checkpoint at .*x\.ckpt") if given[app] else contextlib.nullcontext():
        check_config(found, app, machine=False)  # the data is found: what comes next is checked


def test_truncated_archive_is_named_and_left_untouched(tiny_train_args, fake_archives, tmp_path):
    archives = tmp_path / "archives"
    shutil.copytree(fake_archives, archives)
    broken = archives / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:5000])
    before = broken.read_bytes()
    result = run_script("train.py", *tiny_train_args, f"data.search_dirs=[{archives}]", env=ONE_THREAD)
    assert result.returncode == 2
    assert_clear_failure(result, str(broken), "truncated or corrupted")
    assert broken.read_bytes() == before


def test_corrupted_raw_file_is_named_and_left_untouched(tiny_cfg, tmp_path):
    raw = raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + bytes(100))  # an image magic number in a label file
    with pytest.raises(UserError, match=re.escape(str(labels))):
        train(tiny_cfg())
    assert labels.read_bytes() == b"\x00\x00\x08\x03" + bytes(100)


def test_non_gzip_archive_is_named(tiny_cfg, fake_archives, tmp_path):
    archives = tmp_path / "archives"
    shutil.copytree(fake_archives, archives)
    (archives / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte\.gz is truncated or corrupted"):
        train(tiny_cfg(f"data.search_dirs=[{archives}]"))


@pytest.mark.parametrize(("impl", "lr", "loss"), [("concise", "1e38", r"nan"), ("scratch", "1e30", r"[\d.]+e\+\d+")])
def test_diverged_loss_stops_at_the_first_bad_step(tiny_cfg, tmp_path, impl, lr, loss):
    with pytest.raises(UserError) as error:
        train(tiny_cfg(f"impl={impl}", f"optim.lr={lr}"))
    message = error.value.message
    assert "non-finite loss" in message
    assert re.search(rf"epoch 1, batch 2: loss {loss}\.", message), message
    assert "learning rate that is too high" in message
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt")), "a diverged model was saved"


def test_diverged_loss_read_in_batches_still_names_the_first_bad_step(tiny_cfg):
    """The accelerator path, which reads the losses every few training steps, run on the CPU."""
    cfg = tiny_cfg("optim.lr=1e38")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[StopOnDivergedLoss(check_every=4)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(UserError, match=r"epoch 1, batch 2: loss nan"):
        trainer.fit(instantiate(cfg.impl), datamodule=instantiate(cfg.data))
    assert trainer.global_step == 4


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["trainer.max_steps=30"], "trainer.max_steps=30 ends training before its first validation (at step 215)"),
        (["trainer.max_steps=30", "trainer.limit_train_batches=20"], None),
        (["trainer.max_steps=30", "trainer.limit_train_batches=0.5"], "before its first validation (at step 107)"),
        (["trainer.max_steps=300", "trainer.check_val_every_n_epoch=2"], "before its first validation (at step 430)"),
        (["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=2"], "max_epochs=1 ends training before epoch 2"),
        (["trainer.max_steps=30", "trainer.val_check_interval=10"], None),
        (["trainer.max_steps=30", "trainer.devices=2", "trainer.accelerator=cpu"], None),
        (["trainer.max_steps=30", "data.expected_sizes=null"], None),
        (["trainer.max_steps=30", "trainer.accumulate_grad_batches=8"], None),
        (["trainer.max_steps=30", "test_ckpt=last"], None),
        (["trainer.max_steps=215"], None),
        (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 turns validation off"),
    ],
)
def test_testing_the_best_checkpoint_of_a_run_that_never_validates_is_refused_before_it_starts(
    tiny_cfg, overrides, refused
):
    """The default data's sizes are known before the run: 55,000 training images, 215 batches of 256."""
    sizes = ["data.expected_sizes={train: 60000, test: 10000}", "data.val_size=5000", "data.batch_size=256"]
    cfg = tiny_cfg(*sizes, *overrides)
    if refused is None:
        check_config(cfg, "train", machine=False)
    else:
        with pytest.raises(UserError, match=r"^test_ckpt=best tests the checkpoint with the best val/acc, and") as e:
            check_config(cfg, "train", machine=False)
        assert refused in e.value.message


def test_the_first_validation_is_at_the_step_the_check_names(tiny_cfg):
    """On the synthetic data, 448 training images: 14 batches of 32, then the first validation."""
    sizes = "data.expected_sizes={train: 512, test: 128}"
    refused = r"trainer.max_steps=13 ends training before its first validation \(at step 14\)"
    with pytest.raises(UserError, match=refused):
        check_config(tiny_cfg(sizes, "trainer.max_steps=13"), "train", machine=False)
    metrics = train(tiny_cfg(sizes, "trainer.max_steps=14"))
    assert len(metrics["history"]) == 1 and VAL_ACC in metrics["history"][0]  # validated at step 14
    assert metrics["test_ckpt"].endswith(".ckpt") and "epoch000-val_acc" in metrics["test_ckpt"]  # the best, tested


def test_testing_the_best_checkpoint_when_none_was_chosen_is_explained(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=3")  # stops after 3 of 14 steps
    with pytest.raises(UserError, match=r"no best checkpoint to test: training stopped at step 3, before its first"):
        train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("problem", ["missing", "truncated", "foreign", "other impl"])
def test_bad_resume_checkpoint_is_named(tiny_cfg, tmp_path, problem):
    train(tiny_cfg("impl=scratch", "trainer.max_epochs=1"))
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bad = tmp_path / "bad.ckpt"
    if problem == "truncated":
        bad.write_bytes(good.read_bytes()[:2000])
    elif problem == "foreign":
        bad.write_text("a text file, not a checkpoint")
    elif problem == "other impl":
        bad = good
    impl = "concise" if problem == "other impl" else "scratch"
    with pytest.raises(UserError, match=re.escape(str(bad))) as error:
        check_config(tiny_cfg(f"impl={impl}", f"ckpt_path={bad}", "trainer.max_epochs=2"), "train")
    if problem == "other impl":
        assert "holds a scratch model, but impl=concise" in error.value.message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_diverged_loss_on_a_gpu_names_the_first_bad_step(tiny_cfg):
    with pytest.raises(UserError, match=r"epoch 1, batch 2: loss nan"):
        train(tiny_cfg("optim.lr=1e38", "trainer.accelerator=gpu"))
