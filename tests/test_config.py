"""Hydra composition of conf/train.yaml and its groups."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate

from fashion_mnist_softmax.config.checks import check_config
from fashion_mnist_softmax.errors import UserError

from helpers import ROOT


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
