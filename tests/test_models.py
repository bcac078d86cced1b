"""The hand-written math against torch's references, and scratch == concise."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.functional.classification import multiclass_accuracy

from fashion_mnist_softmax.models.classifier import accuracy
from fashion_mnist_softmax.models.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.models.scratch import SGD, ScratchSoftmaxRegression, cross_entropy, sgd, softmax
from fashion_mnist_softmax.run.record import EpochSummary
from fashion_mnist_softmax.run.training import train

SGD_CONFIG = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
SCRATCH_SGD = {**SGD_CONFIG, "_target_": "fashion_mnist_softmax.models.scratch.SGD"}


def test_softmax_and_cross_entropy_match_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(64, 10) * 5, torch.randint(0, 10, (64,))
    torch.testing.assert_close(softmax(logits), F.softmax(logits, dim=1))
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))
    ours, theirs = (logits.clone().requires_grad_() for _ in range(2))
    cross_entropy(ours, y).backward()
    F.cross_entropy(theirs, y).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)  # the shift by the row maximum adds no gradient


def test_accuracy_matches_torchmetrics():
    torch.manual_seed(1)
    logits, y = torch.randn(200, 10), torch.randint(0, 10, (200,))
    expected = multiclass_accuracy(logits, y, num_classes=10, average="micro").item()
    assert float(accuracy(logits, y)) == pytest.approx(expected)


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


def test_sgd_with_momentum_needs_no_velocities_to_start():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.5, -1.0])
    velocities = sgd([p], lr=0.1, momentum=0.9)  # the first step: v = g
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, 2.1]))
    sgd([p], lr=0.1, momentum=0.9, velocities=velocities)  # v = 0.9 v + g = 1.9 g
    torch.testing.assert_close(p.detach(), torch.tensor([0.855, 2.29]))


def test_one_seed_gives_one_starting_point():
    L.seed_everything(7)
    scratch = ScratchSoftmaxRegression(optimizer=SCRATCH_SGD)
    L.seed_everything(7)
    concise = ConciseSoftmaxRegression(optimizer=SGD_CONFIG)
    assert torch.equal(scratch.W, concise.net[1].weight.T)
    assert torch.equal(scratch.b, concise.net[1].bias) and not scratch.b.any()
    assert 0.008 < scratch.W.std().item() < 0.012
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(scratch(x), concise(x))
    torch.testing.assert_close(scratch.weight_templates, concise.weight_templates)


def test_concise_optimizer_and_scheduler_come_from_config(tiny_cfg):
    cfg = tiny_cfg("optim=adam", "scheduler=cosine")
    model = instantiate(cfg.impl)
    conf = model.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    scheduler = conf["lr_scheduler"]["scheduler"]
    assert (
        isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
        and conf["lr_scheduler"]["interval"] == "epoch"
    )
    assert scheduler.T_max == cfg.trainer.max_epochs


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 1e-3)])
def test_scratch_and_concise_take_the_same_sgd_step(compose_cfg, momentum, weight_decay):
    """From one state and one minibatch, one step of each gives the same parameters, schedule included."""
    models = {}
    for impl in ("scratch", "concise"):
        extra = [f"optim.momentum={momentum}", f"optim.weight_decay={weight_decay}", "optim.lr=0.5"]
        cfg = compose_cfg([f"impl={impl}", "scheduler=cosine", "trainer.max_epochs=4", *extra])
        L.seed_everything(3)
        model = instantiate(cfg.impl)
        conf = model.configure_optimizers()
        models[impl] = model, conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    torch.manual_seed(4)
    for step in range(4):
        x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        for model, optimizer, scheduler in models.values():
            optimizer.zero_grad()
            model.loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()
        (scratch, *_), (concise, *_) = models.values()
        assert scratch.W.grad.abs().max() > 1e-3, "the step moved nothing"
        torch.testing.assert_close(scratch.W.T, concise.net[1].weight, rtol=0, atol=1e-6, msg=f"step {step}")
        torch.testing.assert_close(scratch.b, concise.net[1].bias, rtol=0, atol=1e-6, msg=f"step {step}")
    assert models["scratch"][1].param_groups[0]["lr"] == models["concise"][1].param_groups[0]["lr"] < 0.5


@pytest.mark.parametrize("extra", [[], ["optim.momentum=0.9", "optim.weight_decay=0.001", "scheduler=cosine"]])
def test_scratch_and_concise_train_alike_epoch_by_epoch(tiny_cfg, tmp_path, extra):
    """The same start, the same batches, the chapter's lr 0.1: the same numbers, epoch by epoch."""
    histories = {}
    for impl in ("scratch", "concise"):
        cfg = tiny_cfg(f"impl={impl}", f"paths.output_dir={tmp_path / impl}", "trainer.max_epochs=3", *extra)
        histories[impl] = train(cfg)["history"]
    for a, b in zip(histories["scratch"], histories["concise"], strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def _trained_weights(tiny_cfg, out: Path, *overrides: str) -> tuple[dict[str, torch.Tensor], int]:
    train(tiny_cfg(f"paths.output_dir={out}", "test_ckpt=last", *overrides))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if "." not in k or k.startswith("net.")}, ckpt["global_step"]


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_gradient_accumulation_over_two_batches_is_one_batch_twice_as_large(tiny_cfg, tmp_path, impl):
    """Batches of 32 come from the same shuffle as batches of 64, so two of them make one of 64."""
    accumulated, steps = _trained_weights(
        tiny_cfg, tmp_path / "a", f"impl={impl}", "data.batch_size=32", "trainer.accumulate_grad_batches=2"
    )
    whole, whole_steps = _trained_weights(tiny_cfg, tmp_path / "w", f"impl={impl}", "data.batch_size=64")
    assert steps == whole_steps == 2 * 7  # 448 training images: 7 optimizer steps an epoch
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_gradient_clipping_bounds_every_step(tiny_cfg, tmp_path, impl):
    L.seed_everything(42)
    start = instantiate(tiny_cfg(f"impl={impl}").impl).state_dict()
    clip, lr = 1e-3, 0.1
    for name, extra in {"clipped": [f"trainer.gradient_clip_val={clip}"], "free": []}.items():
        weights, steps = _trained_weights(tiny_cfg, tmp_path / name, f"impl={impl}", "trainer.max_epochs=1", *extra)
        moved = torch.cat([(weights[k] - start[k]).flatten() for k in weights]).norm().item()
        if name == "clipped":
            assert moved <= steps * lr * clip * (1 + 1e-4)  # each step moves the weights by at most lr * clip
        else:
            assert moved > 10 * steps * lr * clip


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
    """Sleeps after every validation batch and notes when training started and when it stopped."""

    def on_train_epoch_start(self, *args, **kwargs) -> None:
        self.train_start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.sanity_checking:
            return
        self.train_time = time.perf_counter() - self.train_start

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        time.sleep(0.5)


def test_epoch_time_leaves_validation_out(tiny_cfg):
    # 64 validation images: 2 batches, 1 s of sleep. Compared with the training time this test
    # measures itself, not with a fixed bound, so that a slow machine cannot fail it.
    cfg = tiny_cfg("impl=concise", "trainer.max_epochs=1")
    summary, slow = EpochSummary(), SlowValidation()
    trainer = L.Trainer(max_epochs=1, callbacks=[summary, slow], **QUIET)
    trainer.fit(instantiate(cfg.impl), datamodule=instantiate(cfg.data))
    assert 0 < summary.history[0]["time_s"] < slow.train_time + 0.5


@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_a_short_last_batch_weighs_what_it_holds(tiny_cfg, impl):
    # 128 test images in batches of 48: 48, 48 and 32. The logged loss is the mean over images, as the
    # chapter's Accumulator sums it, not the mean of the three batch means.
    cfg = tiny_cfg(f"impl={impl}", "data.batch_size=48")
    model, datamodule = instantiate(cfg.impl), instantiate(cfg.data)
    trainer = L.Trainer(**QUIET)
    trainer.test(model, datamodule=datamodule, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    losses = [F.cross_entropy(model(x), y, reduction="none") for x, y in datamodule.test_dataloader()]
    assert [len(batch) for batch in losses] == [48, 48, 32]
    assert logged["test/loss"] == pytest.approx(torch.cat(losses).mean().item(), abs=1e-6)
    assert logged["test/loss"] != pytest.approx(torch.stack([b.mean() for b in losses]).mean().item(), abs=1e-6)


def test_a_fast_dev_run_trains_a_batch_and_tests_its_model_as_it_is(tiny_cfg, tmp_path):
    """trainer.fast_dev_run saves no checkpoint, so there is none to choose: the model in memory is tested."""
    (tmp_path / "run").mkdir()  # Hydra's, in a run
    metrics = train(tiny_cfg("trainer.fast_dev_run=true"))
    assert [row["epoch"] for row in metrics["history"]] == [1] and metrics["test_ckpt"] is None
    assert 0 <= metrics["test/acc"] <= 1 and not (tmp_path / "run" / "checkpoints").exists()


def test_test_false_fits_only(tiny_cfg, tmp_path, capsys):
    metrics = train(tiny_cfg("test=false"))
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2 and metrics["val/acc_best"] is not None
    assert metrics["test/acc"] is None and metrics["test_ckpt"] is None and "test acc" not in capsys.readouterr().out


def test_train_false_tests_a_checkpoint_as_it_is(tiny_cfg, tmp_path):
    first = train(tiny_cfg())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    again_dir = tmp_path / "again"
    again_dir.mkdir()  # Hydra's, in a run
    again = train(tiny_cfg("train=false", f"ckpt_path={last}", f"paths.output_dir={again_dir}"))
    assert again["history"] == first["history"] and again["test_ckpt"] == str(last)  # its record, not trained on
    assert 0 <= again["test/acc"] <= 1 and not (again_dir / "checkpoints").exists()
    assert torch.load(last, weights_only=True)["global_step"] == 2 * 14
