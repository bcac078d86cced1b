"""The hand-written math against torch's references, and scratch == concise."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.functional.classification import multiclass_accuracy

from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.callbacks import EpochSummary
from fashion_mnist_softmax.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.scratch import SGD, ScratchSoftmaxRegression, accuracy, cross_entropy, sgd, softmax
from fashion_mnist_softmax.training import train

SGD_CONFIG = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}


def test_softmax_and_cross_entropy_match_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(64, 10) * 5, torch.randint(0, 10, (64,))
    torch.testing.assert_close(softmax(logits), F.softmax(logits, dim=1))
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))


def test_accuracy_matches_torchmetrics():
    torch.manual_seed(1)
    logits, y = torch.randn(200, 10), torch.randint(0, 10, (200,))
    expected = multiclass_accuracy(logits, y, num_classes=10, average="micro").item()
    assert accuracy(logits, y) == pytest.approx(expected)


def test_stable_where_the_chapters_formula_overflows():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -999.0]])
    y = torch.tensor([0, 1])
    naive = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    assert not torch.isfinite(naive).all()
    assert torch.isfinite(softmax(logits)).all()
    torch.testing.assert_close(softmax(logits), F.softmax(logits, dim=1))
    assert torch.isfinite(cross_entropy(logits, y))
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.5, 1e-3)])
def test_sgd_matches_torch_optim_sgd(momentum, weight_decay):
    torch.manual_seed(2)
    ours, theirs = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5, 3))
    with torch.no_grad():
        theirs.copy_(ours)
    mine = SGD([ours], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(4):
        target = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        for p, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
        torch.testing.assert_close(ours, theirs)


def test_plain_sgd_step_is_param_minus_lr_grad():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.5, -1.0])
    sgd([p], lr=0.1)
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, 2.1]))


def test_one_seed_gives_one_starting_point():
    L.seed_everything(7)
    scratch = ScratchSoftmaxRegression(optimizer=SGD_CONFIG)
    L.seed_everything(7)
    concise = ConciseSoftmaxRegression(optimizer=SGD_CONFIG)
    assert torch.equal(scratch.W, concise.net[1].weight.T)
    assert torch.equal(scratch.b, concise.net[1].bias) and not scratch.b.any()
    assert 0.008 < scratch.W.std().item() < 0.012
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(scratch(x), concise(x))
    torch.testing.assert_close(scratch.weight_templates, concise.weight_templates)


def test_scratch_refuses_other_optimizers():
    model = ScratchSoftmaxRegression(optimizer={"_target_": "torch.optim.Adam", "lr": 0.01})
    with pytest.raises(UserError, match="impl=concise"):
        model.configure_optimizers()


def test_concise_optimizer_and_scheduler_come_from_config(tiny_cfg):
    cfg = tiny_cfg("optim=adam", "scheduler=cosine")
    model = instantiate(cfg.impl)
    conf = model.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert isinstance(conf["lr_scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert conf["lr_scheduler"].T_max == cfg.trainer.max_epochs


@pytest.mark.parametrize("extra", [[], ["optim.momentum=0.9", "optim.weight_decay=0.001", "scheduler=cosine"]])
def test_scratch_and_concise_train_alike_epoch_by_epoch(tiny_cfg, tmp_path, extra):
    """The proof that the scratch code is right: same start, same batches, same numbers."""
    histories = {}
    for impl in ("scratch", "concise"):
        cfg = tiny_cfg(f"impl={impl}", f"paths.output_dir={tmp_path / impl}", "trainer.max_epochs=3", *extra)
        histories[impl] = train(cfg)["history"]
    for a, b in zip(histories["scratch"], histories["concise"], strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_minibatches_per_training_step_change_nothing_but_speed(tiny_cfg, tmp_path, impl):
    """The same SGD steps on the same minibatches, whether Lightning sees them one or several at a time."""
    runs = {}
    for k in (1, 4):
        out = tmp_path / f"k{k}"
        cfg = tiny_cfg(f"impl={impl}", f"paths.output_dir={out}", f"data.batches_per_step={k}", "scheduler=cosine")
        history = [{key: v for key, v in row.items() if key != m.EPOCH_TIME} for row in train(cfg)["history"]]
        runs[k] = history, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    (history_1, ckpt_1), (history_4, ckpt_4) = runs[1], runs[4]
    assert history_1 == history_4
    assert ckpt_1["global_step"] == ckpt_4["global_step"] == 2 * 14  # optimizer steps: 14 minibatches per epoch
    for name, value in ckpt_1["state_dict"].items():
        assert torch.equal(ckpt_4["state_dict"][name], value), name


QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_scheduler_steps_once_per_epoch(tiny_cfg):
    cfg = tiny_cfg("impl=concise", "scheduler=cosine", "optim.lr=0.1", "trainer.max_epochs=3")
    rates = LearningRates()
    trainer = L.Trainer(max_epochs=3, callbacks=[rates], **QUIET)
    trainer.fit(instantiate(cfg.impl), datamodule=instantiate(cfg.data))
    assert rates.seen == pytest.approx([0.1, 0.075, 0.025])  # 0.1 * (1 + cos(pi * epoch / 3)) / 2


class SlowValidation(L.Callback):
    def on_validation_batch_end(self, *args, **kwargs) -> None:
        time.sleep(0.5)


def test_epoch_time_leaves_validation_out(tiny_cfg):
    cfg = tiny_cfg("impl=concise", "trainer.max_epochs=1")  # 64 validation images: 2 batches, 1 s of sleep
    summary = EpochSummary()
    trainer = L.Trainer(max_epochs=1, callbacks=[summary, SlowValidation()], **QUIET)
    start = time.perf_counter()
    trainer.fit(instantiate(cfg.impl), datamodule=instantiate(cfg.data))
    assert time.perf_counter() - start > 1.0
    assert 0 < summary.history[0]["time_s"] < 1.0
