"""Hydra composition of conf/train.yaml and its groups, each node made from its target's signature."""

import json
import shutil
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate

from fashion_mnist_softmax.config.checks import check_config
from fashion_mnist_softmax.config.signatures import parameters
from fashion_mnist_softmax.errors import UserError

from helpers import ROOT, run_script, tiny_overrides


def test_defaults_compose(compose_cfg):
    cfg = compose_cfg(["paths.output_dir=/tmp/x"])
    assert get_class(cfg.impl._target_).__name__ == "ConciseSoftmaxRegression"
    assert get_class(cfg.data._target_).__name__ == "FashionMNISTDataModule"
    assert cfg.seed == 42 and cfg.test_ckpt == "best" and cfg.scheduler is None
    assert cfg.data.batch_size == 256 and cfg.data.val_size == 5000 and cfg.data.normalize is False
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0 and cfg.optim.weight_decay == 0
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.devices == 1
    assert list(cfg.logger) == ["tensorboard"]
    assert cfg.impl.optimizer.lr == cfg.optim.lr


def test_d2l_experiment_is_the_chapters_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=d2l", "impl=scratch"])
    assert get_class(cfg.impl._target_).__name__ == "ScratchSoftmaxRegression"
    assert (cfg.data.batch_size, cfg.data.val_size, cfg.data.normalize) == (256, 0, False)
    assert (cfg.optim.lr, cfg.trainer.max_epochs, cfg.test_ckpt) == (0.1, 5, "last")


@pytest.mark.parametrize(
    ("impl", "module"), [("scratch", "fashion_mnist_softmax.models.scratch"), ("concise", "torch.optim")]
)
def test_the_optimizer_config_names_the_class_that_runs(compose_cfg, impl, module):
    cfg = compose_cfg([f"impl={impl}", "optim.lr=0.3", "optim.momentum=0.5"])
    model = instantiate(cfg.impl)
    built = model.configure_optimizers()
    assert type(built) is get_class(cfg.optim._target_) is get_class(cfg.impl.optimizer._target_)
    assert cfg.optim._target_ == f"{module}.SGD"
    assert built.defaults["lr"] == 0.3 and built.defaults["momentum"] == 0.5
    assert isinstance(model.hparams.optimizer, dict)  # plain data: checkpoints load weights-only


def test_groups_switch(compose_cfg):
    cfg = compose_cfg(["scheduler=cosine", "logger=csv", "debug=quick", "optim=adam"])
    assert cfg.scheduler.T_max == cfg.trainer.max_epochs == 1
    assert list(cfg.logger) == ["csv"] and cfg.trainer.limit_train_batches == 2
    assert cfg.optim._target_ == "torch.optim.Adam"


def test_unknown_impl_lists_the_choices(compose_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["impl=nope"])
    assert "concise" in str(e.value.__cause__ or e.value) and "scratch" in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("seed=-1", "seed=-1 is not valid: it must be a whole number from 0 to 4294967295"),
        ("optim.weight_decay=null", "optim.weight_decay=null is not valid: it must be a number of at least 0"),
        ("trainer.limit_test_batches=0", "trainer.limit_test_batches=0 is not valid: it must be a number of batches"),
        # 64 hold-out images in batches of 32: a thousandth of 2 batches is none
        ("trainer.limit_val_batches=0.001", "trainer.limit_val_batches=0.001 is not valid: it must be at least 1/2"),
        ("trainer.limit_val_batches=0", "test_ckpt=best tests the checkpoint with the best val/acc"),
    ],
)
def test_values_lightning_would_refuse_after_the_data_has_loaded_are_refused_first(tiny_cfg, override, phrase):
    """The same check that ``test_faults.py`` runs in real train.py processes, on the composed config."""
    with pytest.raises(UserError) as error:
        check_config(tiny_cfg(override), "train")
    assert phrase in error.value.message


def test_adams_missing_momentum_is_not_a_null_one(tiny_cfg):
    check_config(tiny_cfg("impl=concise", "optim=adam"), "train")  # Adam has no momentum key


def test_every_callbacks_choice_declares_what_every_run_has(compose_cfg):
    always = {"epoch_summary", "stop_on_diverged_loss", "save_on_interrupt", "best_checkpoint", "last_checkpoint"}
    for choice in ("none", "inspection", "default"):
        cfg = compose_cfg([f"callbacks={choice}", "paths.output_dir=/tmp/x"])
        assert always <= cfg.callbacks.keys(), choice
        assert cfg.callbacks.best_checkpoint.dirpath == cfg.callbacks.last_checkpoint.dirpath == "/tmp/x/checkpoints"
    training = (ROOT / "src" / "fashion_mnist_softmax" / "run" / "training.py").read_text()
    built = ("ModelCheckpoint(", "EpochSummary(", "StopOnDivergedLoss(", "SaveOnInterrupt(")
    assert not [name for name in built if name in training], "train() adds a callback the config does not declare"


def test_every_argument_of_a_target_is_a_key_with_the_default_its_signature_declares(compose_cfg):
    cfg = compose_cfg(["optim=adam", "optim.betas=[0.8,0.99]", "trainer.profiler=simple", "scheduler=cosine"])
    cfg.paths.output_dir = "/tmp/x"
    assert list(cfg.optim.betas) == [0.8, 0.99] and cfg.optim.eps == 1e-8  # torch.optim.Adam's
    assert cfg.trainer.profiler == "simple" and cfg.trainer.overfit_batches == 0.0  # lightning.Trainer's
    assert cfg.scheduler.eta_min == 0.0 and cfg.scheduler.T_max == cfg.trainer.max_epochs
    assert cfg.data.download_timeout == 10.0 and list(cfg.data.search_dirs) == ["/usr/share/datasets/fashion-mnist"]
    assert "params" not in cfg.optim and "optimizer" not in cfg.scheduler  # what the run passes itself
    assert "callbacks" not in cfg.trainer and "logger" not in cfg.trainer
    assert instantiate(cfg.trainer).max_epochs == cfg.trainer.max_epochs


def test_signatures_are_read_without_importing_torch():
    """A config is composed, and a mistake in it reported, before torch and Lightning load (seconds)."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train', ['impl=scratch', 'scheduler=cosine', 'optim.lr=0.3'])\n"
        "assert cfg.trainer.log_every_n_steps == 50 and cfg.optim.momentum == 0.0, cfg\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_a_constructor_argument_added_is_a_key_with_no_other_file_changed(tmp_path, fake_archives):
    """In a copy of the package, the DataModule takes one more argument: train.py takes it on the command line,
    typed as its signature says, and refuses a wrong type before any run dir."""
    shutil.copytree(ROOT / "src" / "fashion_mnist_softmax", tmp_path / "src" / "fashion_mnist_softmax")
    module = tmp_path / "src" / "fashion_mnist_softmax" / "data" / "datamodule.py"
    source = module.read_text()
    argument = "        normalize: bool = False,\n"
    assert argument in source
    module.write_text(source.replace(argument, argument + "        crop_margin: int = 2,\n"))
    env = {"PYTHONPATH": str(tmp_path / "src")}
    shown = run_script("train.py", "data.crop_margin=5", "--cfg", "job", "--package", "data", env=env)
    assert shown.returncode == 0 and "crop_margin: 5" in shown.stdout, shown.stderr[-2000:]
    logs = tmp_path / "logs"
    refused = run_script("train.py", "data.crop_margin=wide", f"paths.log_dir={logs}", env=env)
    assert refused.returncode == 2 and not logs.exists()
    assert "data.crop_margin='wide' is not valid: it must be a whole number" in " ".join(refused.stderr.split())
    default = run_script("train.py", "--cfg", "job", "--package", "data")  # the package as it is: no such key
    assert "crop_margin" not in default.stdout


def test_a_signature_the_source_cannot_say_is_read_from_the_imported_class(tmp_path, monkeypatch):
    (tmp_path / "made_at_run_time.py").write_text('Made = type("Made", (), {"__init__": lambda self, size=3: None})\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    (size,) = parameters("made_at_run_time.Made")
    assert (size.name, size.default) == ("size", 3)


MLP = '''"""A model added to the project: one hidden layer."""

import torch
from torch import nn

from fashion_mnist_softmax.models.classifier import Classifier


class MLP(Classifier):
    def __init__(self, *args, hidden: int = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y)
'''


def test_a_model_added_is_two_files_its_module_and_its_yaml(tmp_path, fake_archives):
    """In a copy of the project, a third model is its module and conf/impl/mlp.yaml: train.py trains it with its
    own argument from the command line, and eval.py rebuilds it from the checkpoint (the registry derives it)."""
    shutil.copytree(ROOT / "src" / "fashion_mnist_softmax", tmp_path / "src" / "fashion_mnist_softmax")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    for entry in ("train.py", "eval.py"):
        shutil.copy(ROOT / entry, tmp_path / entry)
    (tmp_path / "src" / "fashion_mnist_softmax" / "models" / "mlp.py").write_text(MLP)
    concise = (tmp_path / "conf" / "impl" / "concise.yaml").read_text()
    (tmp_path / "conf" / "impl" / "mlp.yaml").write_text(concise.replace("concise.ConciseSoftmaxRegression", "mlp.MLP"))
    env = {"PYTHONPATH": str(tmp_path / "src")}
    run = tmp_path / "run"
    args = [*tiny_overrides(fake_archives, tmp_path / "data", run), f"hydra.run.dir={run}", "trainer.max_epochs=1"]
    trained = run_script(str(tmp_path / "train.py"), "impl=mlp", "impl.hidden=8", *args, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["impl"] == "mlp" and metrics["hparams"]["impl"]["hidden"] == 8
    ckpt = run / "checkpoints" / "last.ckpt"
    evaluated = run_script(
        str(tmp_path / "eval.py"), f"ckpt_path={ckpt}", *args[:4], f"paths.output_dir={tmp_path / 'eval'}", env=env
    )
    assert evaluated.returncode == 0 and "test" in evaluated.stdout, evaluated.stderr[-3000:]
