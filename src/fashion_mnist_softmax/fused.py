"""Fused sweeps: the jobs of a sweep that differ only in lr, momentum, weight decay, seed or impl, trained as one
population of K softmax regressions, each job's outputs written as if it had run alone.

A softmax regression has 7,850 parameters: a lone job's time goes to fixed costs (Lightning's loop, Python,
set-up), not arithmetic. Side by side, the members' weights form one (784, K, 10) tensor: the members that
share a seed see the same minibatches (each member draws its init and its shuffle exactly as its lone run
does), so their forward pass is one (B, 784) x (784, K_seed * 10) product. The update is the chapter's SGD
with each member's own lr, momentum and weight decay; a member whose loss diverges fails alone.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from fashion_mnist_softmax import console
from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.checkpoints import DATA_STATE, MODEL_CLASS
from fashion_mnist_softmax.config import check_train_config
from fashion_mnist_softmax.data import EpochBatchSampler, FashionMNISTDataModule
from fashion_mnist_softmax.errors import UserError

# what the members of one group may differ in; every other key of their configs must be equal
MEMBER_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "seed", "data.shuffle_seed", "impl", "paths")
SGDS = ("torch.optim.SGD", "fashion_mnist_softmax.scratch.SGD")
HPARAM_KEYS = ("lr", "weight_decay", "momentum", "seed")  # callbacks.hparams.hparams that follow the member keys


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        cfg = cfg.get(key) or {}
    cfg.pop(last, None)


def group_key(cfg: dict[str, Any]) -> str:
    """What a job shares with the members of its group: its resolved config without the member keys."""
    shared = copy.deepcopy(cfg)
    for key in (*MEMBER_KEYS, *(f"callbacks.hparams.hparams.{k}" for k in HPARAM_KEYS)):
        _drop(shared, key)
    if shared.get("optim", {}).get("_target_") in SGDS:
        _drop(shared, "optim._target_")  # the hand-written SGD and torch's take the same steps
    return json.dumps(shared, sort_keys=True).replace(cfg["paths"]["output_dir"], "<job dir>")


def why_not_fused(cfg: dict[str, Any]) -> str | None:
    """Why a job cannot train in a fused group (it then runs alone), or None."""
    trainer = cfg["trainer"]
    if cfg["optim"]["_target_"] not in SGDS:
        return f"the optimizer {cfg['optim']['_target_']} is not SGD"
    if trainer.get("strategy") not in (None, "auto") or trainer.get("devices") not in (1, "auto"):
        return "DDP: a fused group trains in one process"
    if trainer.get("num_nodes", 1) != 1:
        return "several nodes"
    if trainer.get("accumulate_grad_batches", 1) != 1 or trainer.get("gradient_clip_val"):
        return "gradient accumulation or clipping"
    if trainer.get("max_steps", -1) != -1 or any(
        trainer.get(f"limit_{s}_batches") is not None for s in ("train", "val", "test")
    ):
        return "a step or batch limit"
    if cfg.get("ckpt_path"):
        return "a resumed run"
    return None


class StackedSampler:
    """One (S, B) index tensor per step: batch ``i`` of each seed's own epoch order."""

    def __init__(self, samplers: list[EpochBatchSampler]) -> None:
        self.samplers = samplers

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from (torch.stack(batches) for batches in zip(*self.samplers, strict=True))

    def __len__(self) -> int:
        return len(self.samplers[0])


class FusedDataModule(FashionMNISTDataModule):
    """The DataModule of a lone run, whose training batches come one per seed of the group, stacked."""

    def __init__(self, seeds: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seeds = seeds

    def train_dataloader(self) -> DataLoader:
        ds = self.train_set
        ds.to(self.trainer.strategy.root_device)
        samplers = [EpochBatchSampler(len(ds), self.batch_size, True, seed) for seed in self.seeds]
        return DataLoader(ds, batch_size=None, sampler=StackedSampler(samplers))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, as the scratch model computes it: (B, K, 10) logits to (K,) losses."""
    top = logits.max(dim=-1, keepdim=True).values
    log_sum_exp = top.squeeze(-1) + (logits - top).exp().sum(dim=-1).log()
    true = logits.gather(-1, y.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(-1)
    return (log_sum_exp - true).mean(dim=0)


class FusedSGD(torch.optim.Optimizer):
    """The chapter's SGD with momentum and weight decay, each member with its own: tensors broadcast over members.

    ``lr`` of the param group is a factor, 1 at the start, that a learning-rate scheduler changes for every
    member alike; a member's step is ``lr * member_lr``.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        shapes: list[tuple[int, ...]],
        lr: torch.Tensor,
        momentum: torch.Tensor,
        weight_decay: torch.Tensor,
    ) -> None:
        super().__init__(params, {"lr": 1.0})
        self.member = [
            {"lr": lr.view(s), "momentum": momentum.view(s), "weight_decay": weight_decay.view(s)} for s in shapes
        ]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        for p, member in zip(group["params"], self.member, strict=True):
            g = p.grad + member["weight_decay"] * p
            state = self.state[p]
            v = state["velocity"] = (
                g.clone() if "velocity" not in state else state["velocity"].mul_(member["momentum"]).add_(g)
            )
            p.sub_(group["lr"] * member["lr"] * v)
        return loss


class FusedSoftmaxRegression(L.LightningModule):
    """K softmax regressions as one module: ``W`` (784, K, 10) and ``b`` (K, 10), members ordered by seed."""

    def __init__(
        self,
        seeds: list[int],
        seed_of: list[int],
        lr: list[float],
        momentum: list[float],
        weight_decay: list[float],
        scheduler: dict[str, Any] | None,
        max_loss: float = 1e6,
    ) -> None:
        super().__init__()
        k = len(seed_of)
        inits = []
        for seed in seed_of:  # each member's init, drawn exactly as its lone run draws it
            L.seed_everything(seed, workers=True, verbose=False)
            inits.append(torch.normal(0.0, 0.01, (10, 784)).T)
        self.W = torch.nn.Parameter(torch.stack(inits, dim=1).contiguous())
        self.b = torch.nn.Parameter(torch.zeros(k, 10))
        for name, values in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
        self.ranges = [(seed_of.index(s), len(seed_of) - seed_of[::-1].index(s)) for s in seeds]
        self.scheduler, self.max_loss = scheduler, max_loss
        self.alive = torch.ones(k, dtype=torch.bool)
        self.failures: dict[int, str] = {}
        self.sums: dict[str, torch.Tensor] = {}

    def logits(self, x: torch.Tensor, a: int = 0, c: int | None = None) -> torch.Tensor:
        """(B, n, 10) logits of members a..c on images x."""
        c = self.W.shape[1] if c is None else c
        out = x.reshape(len(x), -1) @ self.W[:, a:c].reshape(784, -1) + self.b[a:c].reshape(-1)
        return out.view(len(x), c - a, 10)

    def _add(self, stage: str, losses: torch.Tensor, correct: torch.Tensor, n: int, a: int = 0) -> None:
        k = self.W.shape[1]
        sums = self.sums.setdefault(stage, torch.zeros(3, k, dtype=torch.float64, device=self.device))
        sums[0, a : a + len(losses)] += losses.detach().double() * n
        sums[1, a : a + len(losses)] += correct.double()
        sums[2, a : a + len(losses)] += n

    def epoch_metrics(self, stage: str) -> tuple[list[float], list[float]]:
        """Each member's mean loss and accuracy over the stage's epoch so far; resets them."""
        sums = self.sums.pop(stage).cpu()
        return (sums[0] / sums[2]).tolist(), (sums[1] / sums[2]).tolist()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        losses = []
        for s, (a, c) in enumerate(self.ranges):
            logits = self.logits(images[s], a, c)
            loss = cross_entropy(logits, labels[s])
            self._add("train", loss, (logits.argmax(-1) == labels[s].view(-1, 1)).sum(0), len(labels[s]), a)
            losses.append(loss)
        losses = torch.cat(losses)
        self._fail_diverged(losses, batch_idx)
        return torch.where(self.alive.to(losses.device), losses, torch.zeros_like(losses)).sum()

    def _fail_diverged(self, losses: torch.Tensor, batch_idx: int) -> None:
        bad = ~(losses.detach().abs() <= self.max_loss).cpu() & self.alive
        for k in bad.nonzero().flatten().tolist():
            self.alive[k] = False
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] * float(self.lr[k])
            self.failures[k] = (
                f"Training stopped: the loss diverged (a non-finite loss, or above {self.max_loss:g}) at epoch "
                f"{self.current_epoch + 1}, batch {batch_idx + 1}: loss {float(losses[k]):g}. The likely cause is a "
                f"learning rate that is too high (optim.lr={lr:g}). Lower optim.lr (the chapter uses 0.1)."
            )

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits = self.logits(x)
        self._add(stage, cross_entropy(logits, y), (logits.argmax(-1) == y.view(-1, 1)).sum(0), len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def configure_optimizers(self) -> Any:
        optimizer = FusedSGD([self.W, self.b], [(1, -1, 1), (-1, 1)], self.lr, self.momentum, self.weight_decay)
        if self.scheduler is None:
            return optimizer
        scheduler = get_class(self.scheduler["_target_"])(
            optimizer, **{k: v for k, v in self.scheduler.items() if k != "_target_"}
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class Member:
    """One job of a fused group: its config, its job dir, and what it writes there as a lone run would."""

    def __init__(self, cfg: dict[str, Any], k: int) -> None:
        self.cfg, self.k, self.dir = cfg, k, Path(cfg["paths"]["output_dir"])
        self.history: list[dict[str, float]] = []
        self.best, self.best_path, self.best_state = -math.inf, None, None
        impl = cfg["impl"]
        self.model = get_class(impl["_target_"])(optimizer=impl["optimizer"], scheduler=impl["scheduler"])
        self.loggers = [
            get_class(node["_target_"])(**{k: v for k, v in node.items() if k != "_target_"})
            for node in (cfg.get("logger") or {}).values()
            if node
        ]

    def weights(self, module: FusedSoftmaxRegression) -> dict[str, torch.Tensor]:
        """The member's parameters under the names of its own impl's model."""
        w, b = module.W.detach()[:, self.k].cpu(), module.b.detach()[self.k].cpu()
        if hasattr(self.model, "W"):
            return {"W": w.clone(), "b": b.clone()}
        return {"net.1.weight": w.T.contiguous(), "net.1.bias": b.clone()}

    def save(
        self, path: Path, weights: dict[str, torch.Tensor], best: float, data_state: dict, epoch: int, step: int
    ) -> None:
        """A checkpoint of the member's own impl, as train.py writes one: eval.py and predict.py load it."""
        self.model.load_state_dict(weights, strict=False)
        self.model.val_acc_best.max_value.fill_(best)
        state = {
            "state_dict": self.model.state_dict(),
            "hyper_parameters": dict(self.model.hparams),
            MODEL_CLASS: self.model.__module__ + "." + type(self.model).__qualname__,
            DATA_STATE: data_state,
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": L.__version__,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)


class FusedJobs(L.Callback):
    """Each member's epoch lines, history, checkpoints and logs, in its own job dir, every epoch."""

    def __init__(self, members: list[Member], data_state: Any) -> None:
        self.members, self.data_state = members, data_state
        self._start, self._time = 0.0, None

    def on_train_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        self._start, self._time = time.perf_counter(), None

    def on_validation_epoch_start(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._time = self._time or time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: L.Trainer, module: FusedSoftmaxRegression) -> None:
        seconds = self._time or time.perf_counter() - self._start
        train_loss, train_acc = module.epoch_metrics("train")
        val_loss, val_acc = module.epoch_metrics("val") if "val" in module.sums else ([math.nan] * len(train_loss),) * 2
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        for member in self.members:
            if not module.alive[member.k]:
                continue
            k = member.k
            row = {
                "epoch": epoch,
                m.TRAIN_LOSS: train_loss[k],
                m.TRAIN_ACC: train_acc[k],
                m.VAL_LOSS: val_loss[k],
                m.VAL_ACC: val_acc[k],
                m.EPOCH_TIME: seconds,
            }
            member.history.append(row)
            weights = member.weights(module)
            if val_acc[k] > member.best:
                if member.best_path is not None:
                    member.best_path.unlink(missing_ok=True)
                member.best, member.best_state = val_acc[k], weights
                member.best_path = member.dir / "checkpoints" / f"epoch{epoch - 1:03d}-val_acc{val_acc[k]:.4f}.ckpt"
                member.save(member.best_path, weights, member.best, self.data_state, epoch - 1, step)
            member.save(
                member.dir / "checkpoints" / "last.ckpt", weights, member.best, self.data_state, epoch - 1, step
            )
            member.log(
                {k2: v for k2, v in row.items() if k2 != "epoch" and k2 != m.EPOCH_TIME}
                | {m.VAL_ACC_BEST: member.best, m.TRAIN_EPOCH_TIME: seconds, "epoch": epoch - 1},
                step,
            )
        alive = [member.k for member in self.members if module.alive[member.k]]
        if alive:
            losses, accs = [train_loss[k] for k in alive], [val_acc[k] for k in alive]
            print(
                f"fused epoch {epoch}: {len(alive)} of {len(self.members)} jobs, loss {min(losses):.4f}-"
                f"{max(losses):.4f}, val acc {min(accs):.3f}-{max(accs):.3f}, {seconds:.2f} s",
                flush=True,
            )


def train_group(cfgs: list[dict[str, Any]]) -> list[float | UserError]:
    """Train the resolved configs of one group's jobs together; write each job's outputs; return each job's
    ``val/acc_best``, or the :class:`UserError` it failed with."""
    console.quiet()
    results: list[float | UserError] = [UserError("not trained")] * len(cfgs)
    valid = []
    for i, cfg in enumerate(cfgs):
        try:
            check_train_config(OmegaConf.create(cfg))
            valid.append(i)
        except UserError as e:
            results[i] = e
    if not valid:
        return results
    order = sorted(valid, key=lambda i: cfgs[i]["seed"])  # members that share a seed side by side
    base = cfgs[order[0]]
    seeds = sorted({cfgs[i]["seed"] for i in order})
    data = {k: v for k, v in base["data"].items() if k not in ("_target_", "shuffle_seed")}
    datamodule = FusedDataModule(seeds, **data)
    module = FusedSoftmaxRegression(
        seeds,
        [cfgs[i]["seed"] for i in order],
        [cfgs[i]["optim"]["lr"] for i in order],
        [cfgs[i]["optim"].get("momentum") or 0.0 for i in order],
        [cfgs[i]["optim"].get("weight_decay") or 0.0 for i in order],
        base.get("scheduler"),
    )
    members = [Member(cfgs[i], k) for k, i in enumerate(order)]
    datamodule.setup("fit")
    jobs = FusedJobs(members, datamodule.state_dict())
    trainer_args = {k: v for k, v in base["trainer"].items() if k not in ("_target_", "default_root_dir")}
    trainer = L.Trainer(
        **trainer_args,
        logger=False,
        callbacks=[jobs],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=Path(base["paths"]["output_dir"]).parent,
    )
    trainer.fit(module, datamodule=datamodule)
    with torch.no_grad():  # each member tested with the checkpoint its test_ckpt names
        for member in members:
            if module.alive[member.k] and base["test_ckpt"] == "best" and member.best_state is not None:
                w = member.best_state["W"] if "W" in member.best_state else member.best_state["net.1.weight"].T
                b = member.best_state["b"] if "b" in member.best_state else member.best_state["net.1.bias"]
                module.W[:, member.k] = w.to(module.W.device)
                module.b[member.k] = b.to(module.b.device)
    trainer.test(module, datamodule=datamodule, verbose=False)
    test_loss, test_acc = module.epoch_metrics("test")
    for member, i in zip(members, order, strict=True):
        if not module.alive[member.k]:
            results[i] = UserError(module.failures[member.k])
            continue
        tested = member.best_path if base["test_ckpt"] == "best" else member.dir / "checkpoints" / "last.ckpt"
        metrics = {
            "impl": member.model.name,
            "seed": member.cfg["seed"],
            m.TEST_ACC: test_acc[member.k],
            m.TEST_LOSS: test_loss[member.k],
            m.VAL_ACC_BEST: member.best,
            "test_ckpt": str(tested),
            "hparams": member.cfg,
            "history": member.history,
        }
        member.log({m.TEST_ACC: test_acc[member.k], m.TEST_LOSS: test_loss[member.k]}, trainer.global_step)
        hparams = ((member.cfg.get("callbacks") or {}).get("hparams") or {}).get("hparams")
        for logger in member.loggers:
            if hparams is not None and isinstance(logger, TensorBoardLogger):  # as the HParams callback logs them
                final = {
                    m.HP_TEST_ACC: test_acc[member.k],
                    m.HP_TEST_LOSS: test_loss[member.k],
                    m.HP_VAL_ACC_BEST: member.best,
                }
                logger.log_hyperparams({"impl": member.model.name, **hparams}, final, step=trainer.global_step)
            logger.finalize("success")
        m.write_json_atomic(member.dir / m.METRICS_FILE, metrics)
        results[i] = member.best
    return results
