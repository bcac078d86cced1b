"""Side by side: the seed chapter's pipeline, a plain PyTorch loop, a bare LightningModule, and this project.

    make bench                        # the real Fashion-MNIST, 5 epochs, scaling runs at 1x, 5x, 10x
    python benchmarks/bench.py --data-dir DIR --epochs 2 --scales 1 2   # any folder of the four .gz files

Every pipeline runs in a process of its own, started by this script with ``--case``, so that its peak
RSS (read before the interpreter's teardown: ``peak_rss.py``) and its process time, imports included,
belong to it alone. An epoch's time is its training part (validation excluded, as in ``metrics.json``), without
each run's first epoch. The ratio to the bare LightningModule compares the fastest epochs of the interleaved
repeats: on a shared machine, time stolen by other tenants only ever adds to an epoch (``timeit``'s reasoning);
the medians are printed beside it. Writes ``bench.json`` and ``bench.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH_SIZE, LR = 256, 0.1
CORES = len(os.sched_getaffinity(0))  # the cores this process may use
IMPLS = ("scratch", "concise")


def median_epoch(times: list[float]) -> float:
    """The median epoch time, without the first epoch (warm-up) when there is more than one."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run the Python command ``cmd`` to completion; its wall time and its own peak RSS, read before the
    interpreter's teardown (``benchmarks/peak_rss.py``)."""
    peak_file = log.with_suffix(".peak_rss")
    peak_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        wrapped = [cmd[0], str(ROOT / "benchmarks" / "peak_rss.py"), str(peak_file), *cmd[1:]]
        code = subprocess.run(wrapped, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    if code != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed with exit code {code}; see {log}")
    return {"process_s": time.perf_counter() - start, "peak_rss_mb": float(peak_file.read_text())}


# ---- the cases, each run in its own process ----------------------------------------------------


def case_seed(root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu") -> dict:
    """The chapter's recipe: torchvision's FashionMNIST with ToTensor, DataLoader(num_workers=4), train_ch3."""
    start = time.perf_counter()
    import torch
    import torchvision
    import torchvision.transforms as transforms

    import_s = time.perf_counter() - start
    mnist_train = torchvision.datasets.FashionMNIST(root=str(root), train=True, transform=transforms.ToTensor())
    mnist_test = torchvision.datasets.FashionMNIST(root=str(root), train=False, transform=transforms.ToTensor())
    train_iter = torch.utils.data.DataLoader(mnist_train, batch_size=BATCH_SIZE, shuffle=True, num_workers=4)
    test_iter = torch.utils.data.DataLoader(mnist_test, batch_size=BATCH_SIZE, shuffle=False, num_workers=4)

    start = time.perf_counter()
    for _X, _y in train_iter:
        continue
    pass_s = time.perf_counter() - start

    W = torch.normal(0, 0.01, (784, 10), requires_grad=True)
    b = torch.zeros(10, requires_grad=True)

    def net(X):
        o_exp = (torch.mm(X.view((-1, 784)), W) + b).exp()
        return o_exp / o_exp.sum(dim=1, keepdim=True)

    def loss(y_hat, y):
        return -torch.log(y_hat.gather(1, y.view(-1, 1)))

    epoch_s = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_l_sum, train_acc_sum, n = 0.0, 0.0, 0
        for X, y in train_iter:
            y_hat = net(X)
            l = loss(y_hat, y).sum()  # noqa: E741 (the chapter's name)
            if W.grad is not None:
                W.grad.zero_()
                b.grad.zero_()
            l.backward()
            with torch.no_grad():
                for p in (W, b):
                    p -= LR * p.grad / BATCH_SIZE
            train_l_sum += l.item()
            train_acc_sum += (y_hat.argmax(dim=1) == y).sum().item()
            n += y.shape[0]
        epoch_s.append(time.perf_counter() - start)
        with torch.no_grad():
            test_acc = sum((net(X).argmax(dim=1) == y).float().sum().item() for X, y in test_iter) / len(mnist_test)
        loss_mean, acc = train_l_sum / n, train_acc_sum / n
        print(f"epoch {epoch + 1}, loss {loss_mean:.4f}, train acc {acc:.3f}, test acc {test_acc:.3f}")
    return {"n_train": len(mnist_train), "epoch_s": epoch_s, "pass_s": pass_s, "import_s": import_s}


def case_plain(root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu") -> dict:
    """A hand-written loop over in-memory uint8 tensors: one gather and one cast per batch, metrics per epoch."""
    start = time.perf_counter()
    import torch
    from torch import nn
    from torchvision.datasets import FashionMNIST

    import_s = time.perf_counter() - start
    torch.manual_seed(0)
    train, test = FashionMNIST(str(root), train=True), FashionMNIST(str(root), train=False)
    images, labels = train.data, train.targets
    n = len(labels)
    if impl == "concise":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        params = list(net.parameters())
        nn.init.normal_(params[0], std=0.01)
        nn.init.zeros_(params[1])
        optimizer = torch.optim.SGD(params, lr=LR)
        loss_fn = nn.functional.cross_entropy
    else:
        W, b = torch.normal(0, 0.01, (784, 10), requires_grad=True), torch.zeros(10, requires_grad=True)

        def net(x):
            return x.reshape(-1, 784) @ W + b

        def loss_fn(o, y):
            top = o.max(dim=1, keepdim=True).values
            log_sum_exp = top.squeeze(1) + (o - top).exp().sum(dim=1).log()
            return (log_sum_exp - o.gather(1, y.view(-1, 1)).squeeze(1)).mean()

    def batches():
        for idx in torch.randperm(n).split(BATCH_SIZE):
            yield images.index_select(0, idx).unsqueeze(1).float().div_(255), labels.index_select(0, idx)

    start = time.perf_counter()
    for _x, _y in batches():
        continue
    pass_s = time.perf_counter() - start

    epoch_s = []
    for epoch in range(epochs):
        start = time.perf_counter()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for x, y in batches():
            o = net(x)
            loss = loss_fn(o, y)
            if impl == "concise":
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            else:
                W.grad = b.grad = None
                loss.backward()
                with torch.no_grad():
                    W.sub_(LR * W.grad)
                    b.sub_(LR * b.grad)
            loss_sum += loss.detach() * len(y)
            correct += (o.detach().argmax(dim=1) == y).sum()
        epoch_s.append(time.perf_counter() - start)
        with torch.no_grad():
            test_acc = (net(test.data.unsqueeze(1).float() / 255).argmax(dim=1) == test.targets).float().mean()
        print(f"epoch {epoch + 1}, loss {loss_sum / n:.4f}, train acc {correct / n:.3f}, test acc {test_acc:.3f}")
    return {"n_train": n, "epoch_s": epoch_s, "pass_s": pass_s, "import_s": import_s}


def _softmax_regression(impl: str):
    """The impl's arithmetic as a module: its logits, its loss and its optimizer (nn.Linear, cross-entropy and
    torch.optim.SGD; or the scratch W, b, cross_entropy and SGD)."""
    import torch
    from torch import nn

    from fashion_mnist_softmax.models import scratch

    class SoftmaxRegression(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if impl == "scratch":
                self.W, self.b = nn.Parameter(torch.normal(0, 0.01, (784, 10))), nn.Parameter(torch.zeros(10))
            else:
                self.linear = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, 784) @ self.W + self.b if impl == "scratch" else self.linear(x.flatten(1))

        def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return scratch.cross_entropy(logits, y) if impl == "scratch" else nn.functional.cross_entropy(logits, y)

        def optimizer(self) -> torch.optim.Optimizer:
            return (scratch.SGD if impl == "scratch" else torch.optim.SGD)(self.parameters(), lr=LR)

    return SoftmaxRegression()


def _timed_fit(module, root: Path, epochs: int, accelerator: str, import_s: float, **trainer_args) -> dict:
    """Fit ``module`` on the project's in-memory batches; each epoch's training time, validation excluded, as in
    the project's ``metrics.json``."""
    import lightning as L

    from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.epoch_s: list[float] = []
            self.start: float | None = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def stop(self) -> None:
            if self.start is not None:
                self.epoch_s.append(time.perf_counter() - self.start)
                self.start = None

        def on_validation_start(self, trainer, pl_module) -> None:
            self.stop()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.stop()

    dm = FashionMNISTDataModule(
        str(root), batch_size=BATCH_SIZE, val_size=0, search_dirs=[], download=False, expected_sizes=None
    )
    clock = Clock()
    callbacks = [clock, *trainer_args.pop("callbacks", [])]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        use_distributed_sampler=False,
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(module, datamodule=dm)
    return {"n_train": len(dm.train_set), "epoch_s": clock.epoch_s, "pass_s": 0.0, "import_s": import_s}


def case_bare(root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu") -> dict:
    """Lightning's own floor: a bare LightningModule with the impl's arithmetic, automatic optimization and
    nothing else: no metrics, no logger, no callbacks."""
    start = time.perf_counter()
    import lightning as L

    import_s = time.perf_counter() - start

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _softmax_regression(impl)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.net.loss(self.net(x), y)

        def configure_optimizers(self):
            return self.net.optimizer()

    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return _timed_fit(Bare(), root, epochs, accelerator, import_s, **off)


def case_template(root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu") -> dict:
    """What a lightning-hydra-template user writes for the same model (its ``mnist_module.py`` pattern and default
    callbacks): torchmetrics updated and logged at every step and validated every epoch, ``val/acc_best``, a
    ModelCheckpoint on val/acc, the model summary, Rich's progress bar and the TensorBoard logger."""
    start = time.perf_counter()
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger
    from torchmetrics import MaxMetric, MeanMetric
    from torchmetrics.classification.accuracy import Accuracy

    import_s = time.perf_counter() - start

    class TemplateModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(logger=False)
            self.net = _softmax_regression(impl)
            self.train_acc, self.val_acc = (
                Accuracy("multiclass", num_classes=10),
                Accuracy("multiclass", num_classes=10),
            )
            self.train_loss, self.val_loss, self.val_acc_best = MeanMetric(), MeanMetric(), MaxMetric()

        def on_train_start(self) -> None:
            self.val_loss.reset()
            self.val_acc.reset()
            self.val_acc_best.reset()

        def model_step(self, batch):
            x, y = batch
            logits = self.net(x)
            return self.net.loss(logits, y), torch.argmax(logits, dim=1), y

        def training_step(self, batch, batch_idx):
            loss, preds, targets = self.model_step(batch)
            self.train_loss(loss)
            self.train_acc(preds, targets)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx) -> None:
            loss, preds, targets = self.model_step(batch)
            self.val_loss(loss)
            self.val_acc(preds, targets)
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

        def on_validation_epoch_end(self) -> None:
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

        def configure_optimizers(self):
            return self.net.optimizer()

    out = root.parent / f"template-{impl}"
    callbacks = [
        ModelCheckpoint(out / "checkpoints", monitor="val/acc", mode="max", save_last=True),
        RichModelSummary(max_depth=-1),
        RichProgressBar(),
    ]
    logger = TensorBoardLogger(out, name="tensorboard")
    return _timed_fit(TemplateModule(), root, epochs, accelerator, import_s, callbacks=callbacks, logger=logger)


def case_project_pass(root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu") -> dict:
    """The project's imports (what train.py loads), the data's extraction, and a pass over the training batches."""
    start = time.perf_counter()
    import hydra  # noqa: F401

    from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule
    from fashion_mnist_softmax.run import training  # noqa: F401

    import_s = time.perf_counter() - start
    dm = FashionMNISTDataModule(
        str(root), batch_size=BATCH_SIZE, val_size=0, search_dirs=[data_dir], download=False, expected_sizes=None
    )
    dm.prepare_data()  # extracts the IDX files under root for every other pipeline
    dm.setup()
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for _x, _y in dm.train_dataloader():
            continue
        passes.append(time.perf_counter() - start)
    return {"n_train": len(dm.train_set), "pass_s": statistics.median(passes), "import_s": import_s}


CASES = {
    "seed": case_seed,
    "plain": case_plain,
    "bare": case_bare,
    "template": case_template,
    "project-pass": case_project_pass,
}


# ---- the driver --------------------------------------------------------------------------------


def make_scaled(root: Path, scaled: Path, factor: int) -> int:
    """A training set ``factor`` times larger: the training images repeated, written straight as raw IDX."""
    src, dst = root / "FashionMNIST" / "raw", scaled / "FashionMNIST" / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, header_len in (("train-images-idx3-ubyte", 16), ("train-labels-idx1-ubyte", 8)):
        data = (src / name).read_bytes()
        n = int.from_bytes(data[4:8], "big")
        with open(dst / name, "wb") as f:
            f.write(data[:4] + (n * factor).to_bytes(4, "big") + data[8:header_len])
            for _ in range(factor):
                f.write(memoryview(data)[header_len:])
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(src / name, dst / name)
    return n * factor


def train_py(out: Path, name: str, data_root: Path, *overrides: str) -> tuple[dict, dict]:
    """``python train.py experiment=d2l ...`` as a user runs it: its process figures and its metrics.json."""
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "experiment=d2l", f"hydra.run.dir={run_dir}", f"data.root={data_root}"]
    cmd += ["data.search_dirs=[]", "data.download=false", "data.expected_sizes=null", *overrides]
    proc = run_measured(cmd, out / f"{name}.log")
    return proc, json.loads((run_dir / "metrics.json").read_text())


def row(name: str, pipeline: str, impl: str, runs: list[tuple[dict, dict]], pass_s: float) -> dict:
    """One table row from one or more runs (process figures, child results) of one pipeline."""
    procs, children = zip(*runs, strict=True)
    epochs = [t for c in children for t in (c["epoch_s"][1:] or c["epoch_s"])]
    epoch = statistics.median(epochs)
    return {
        "name": name,
        "pipeline": pipeline,
        "impl": impl,
        "epoch_s": epoch,
        "fastest_epoch_s": min(epochs),
        "epochs_s": [c["epoch_s"] for c in children],
        "images_per_s": children[0]["n_train"] / epoch,
        "pass_s": pass_s,
        "peak_rss_mb": max(p["peak_rss_mb"] for p in procs),
        "process_s": statistics.median(p["process_s"] for p in procs),
        "import_s": children[0].get("import_s"),
    }


def project_run(out: Path, name: str, root: Path, overrides: list[str], n_train: int) -> tuple[dict, dict]:
    proc, metrics = train_py(out, name, root, *overrides)
    return proc, {"epoch_s": [h["time_s"] for h in metrics["history"]], "n_train": n_train}


def run_child(
    out: Path, case: str, root: Path, epochs: int, impl: str, data_dir: Path, accelerator: str = "cpu"
) -> tuple[dict, dict]:
    result = out / f"{case}-{impl}.json"
    cmd = [sys.executable, __file__, "--case", case, "--root", str(root), "--epochs", str(epochs), "--impl", impl]
    cmd += ["--accelerator", accelerator]
    proc = run_measured([*cmd, "--data-dir", str(data_dir), "--json", str(result)], out / f"{case}-{impl}.log")
    return proc, json.loads(result.read_text())


# the issue's sweeps: the chapter's recipe over impl x lr x momentum (x weight decay) x seed
SWEEP_GRIDS = {
    2: ["impl=scratch,concise"],  # the smallest, for the tests
    4: ["impl=scratch,concise", "seed=1,2"],
    32: ["impl=scratch,concise", "optim.lr=0.03,0.1,0.2,0.3", "optim.momentum=0,0.5", "seed=1,2"],
    128: [
        "impl=scratch,concise",
        "optim.lr=0.03,0.1,0.2,0.3",
        "optim.momentum=0,0.5",
        "optim.weight_decay=0,1e-4",
        "seed=1,2,3,4",
    ],
    256: [  # for a GPU: --trainer gpu
        "impl=scratch,concise",
        "optim.lr=0.03,0.1,0.2,0.3",
        "optim.momentum=0,0.5",
        "optim.weight_decay=0,1e-4",
        "seed=1,2,3,4,5,6,7,8",
    ],
}
SWEEP_CALLBACKS = ("none", "default")
SWEEP_TARGETS = {  # (jobs, callbacks): the least speed-up of the fused launcher over each other launcher
    (32, "none"): {"basic": 8, "joblib": 3},
    (32, "default"): {"basic": 5},
    (128, "none"): {"basic": 10},
}
LOSS_TOL, ACC_TOL = 1e-4, 0.002  # the correctness tolerances of the fused launcher


def sweep_py(out: Path, name: str, data_root: Path, *overrides: str) -> tuple[dict, list[dict]]:
    """``python train.py -m experiment=d2l ...``: its process figures and each job's metrics.json, by job number."""
    sweep_dir = out / "sweeps" / name
    shutil.rmtree(sweep_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "-m", "experiment=d2l", f"hydra.sweep.dir={sweep_dir}", f"data.root={data_root}"]
    cmd += ["data.search_dirs=[]", "data.download=false", "data.expected_sizes=null", *overrides]
    proc = run_measured(cmd, out / f"sweep-{name}.log")
    jobs = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    return proc, [json.loads((job / "metrics.json").read_text()) for job in jobs]


def agreement(fused: list[dict], basic: list[dict]) -> dict:
    """How far each fused job is from the same job under the basic launcher, and, as the floor of what
    floating point allows, how far each scratch job is from its concise twin under the basic launcher."""

    def gaps(a: dict, b: dict) -> tuple[float, float]:
        rows = list(zip(a["history"], b["history"], strict=True))
        loss = max(abs(x[k] - y[k]) for x, y in rows for k in ("train/loss", "val/loss"))
        acc = max(
            [abs(x[k] - y[k]) for x, y in rows for k in ("train/acc", "val/acc")] + [abs(a["test/acc"] - b["test/acc"])]
        )
        return loss, acc

    pairs = [gaps(f, b) for f, b in zip(fused, basic, strict=True)]
    lrs = [b["hparams"]["optim"]["lr"] for b in basic]
    oks = [(loss <= LOSS_TOL and acc <= ACC_TOL, lr) for (loss, acc), lr in zip(pairs, lrs, strict=True)]
    half = len(basic) // 2  # impl is the grid's first key: scratch jobs first, then their concise twins
    twins = [gaps(basic[i], basic[i + half]) for i in range(half)]
    return {
        "jobs": len(pairs),
        "within_tolerance": sum(ok for ok, _ in oks),
        "within_tolerance_by_lr": {  # lr: [jobs within tolerance, jobs]
            str(lr): [sum(ok for ok, job_lr in oks if job_lr == lr), sum(job_lr == lr for _, job_lr in oks)]
            for lr in sorted({job_lr for _, job_lr in oks})
        },
        "max_loss_gap": max(loss for loss, _ in pairs),
        "max_acc_gap": max(acc for _, acc in pairs),
        "twins_max_loss_gap": max(loss for loss, _ in twins),
        "twins_max_acc_gap": max(acc for _, acc in twins),
    }


def sweeps(
    out: Path,
    root: Path,
    sizes: list[int],
    epochs: int,
    trainer: str,
    plain_job_s: float | None,
    callbacks_choices: list[str] = SWEEP_CALLBACKS,
) -> list[dict]:
    """Each sweep of ``sizes`` under the basic launcher, joblib with one job per core, and the fused launcher,
    with each of ``callbacks_choices``
    (callbacks=none, the default callbacks), side by side; ``plain_job_s`` is the plain loop's process time for
    one job, imports included."""
    rows = []
    for size in sizes:
        common = [*SWEEP_GRIDS[size], f"trainer={trainer}", f"trainer.max_epochs={epochs}"]
        for callbacks in callbacks_choices:
            lone, _ = train_py(out, f"lone-{callbacks}", root, *common[-2:], f"callbacks={callbacks}")
            basic_proc, basic = sweep_py(out, f"{size}-basic-{callbacks}", root, *common, f"callbacks={callbacks}")
            joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={CORES}"]  # one job per core
            joblib_proc, _ = sweep_py(
                out, f"{size}-joblib-{callbacks}", root, *common, f"callbacks={callbacks}", *joblib
            )
            fused_proc, fused = sweep_py(
                out, f"{size}-fused-{callbacks}", root, *common, f"callbacks={callbacks}", "hydra/launcher=fused"
            )
            rows.append(
                {
                    "jobs": size,
                    "callbacks": callbacks,
                    "basic_s": basic_proc["process_s"],
                    "joblib_s": joblib_proc["process_s"],
                    "joblib_n_jobs": CORES,
                    "fused_s": fused_proc["process_s"],
                    "ratio": basic_proc["process_s"] / fused_proc["process_s"],
                    "joblib_ratio": joblib_proc["process_s"] / fused_proc["process_s"],
                    "fused_per_job_s": fused_proc["process_s"] / size,
                    "plain_loop_job_s": plain_job_s,
                    "basic_peak_rss_mb": basic_proc["peak_rss_mb"],
                    "fused_peak_rss_mb": fused_proc["peak_rss_mb"],
                    # a lone run, plus K members' parameters and velocities (float32) and a batch for each member
                    "memory_budget_mb": lone["peak_rss_mb"] + size * (2 * 7850 + BATCH_SIZE * 785) * 4 / 2**20,
                    "agreement": agreement(fused, basic),
                }
            )
    return rows


def bench(
    data_dir: Path,
    out: Path,
    epochs: int,
    impls: list[str],
    scales: list[int],
    repeats: int,
    trainer: str = "cpu",
    sweep_sizes: list[int] = (),
    sweep_callbacks: list[str] = SWEEP_CALLBACKS,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data"

    proc, project_pass = run_child(out, "project-pass", root, epochs, "concise", data_dir)
    seed_run = run_child(out, "seed", root, epochs, "scratch", data_dir)
    seed = row("seed pipeline (scratch)", "seed", "scratch", [seed_run], seed_run[1]["pass_s"])
    n_train = project_pass["n_train"]

    accelerator = "gpu" if trainer == "gpu" else "cpu"
    pipelines = []  # (name, impl, train.py overrides, or the name of a child case)
    for impl in impls:
        overrides = [f"impl={impl}", f"trainer={trainer}", f"trainer.max_epochs={epochs}"]
        pipelines += [(f"plain PyTorch loop ({impl})", impl, "plain")]
        pipelines += [(f"bare LightningModule ({impl})", impl, "bare")]
        pipelines += [(f"lightning-hydra-template-style module ({impl})", impl, "template")]
        pipelines += [(f"project ({impl})", impl, overrides)]

    def run_once(name: str, impl: str, how: list[str] | str) -> tuple[dict, dict]:
        if isinstance(how, str):
            return run_child(out, how, root, epochs, impl, data_dir, accelerator)
        slug = "-".join(name.replace(",", "").replace("(", "").replace(")", "").split())
        return project_run(out, slug, root, how, n_train)

    runs = {name: [] for name, _, _ in pipelines}
    for _ in range(repeats):  # interleaved, so that a busy spell on a shared machine hits every pipeline alike
        for name, impl, how in pipelines:
            runs[name].append(run_once(name, impl, how))

    rows, references = [seed], {}
    for name, impl, how in pipelines:
        if isinstance(how, str):
            rows.append(row(name, how, impl, runs[name], statistics.median(c["pass_s"] for _, c in runs[name])))
            references[how] = rows[-1]  # the impl's plain loop, bare LightningModule and template-style module
            continue
        rows.append(row(name, "project", impl, runs[name], project_pass["pass_s"]))
        rows[-1]["import_s"] = project_pass["import_s"]
        rows[-1]["vs_plain"] = rows[-1]["epoch_s"] / references["plain"]["epoch_s"]
        rows[-1]["vs_bare"] = rows[-1]["fastest_epoch_s"] / references["bare"]["fastest_epoch_s"]
        rows[-1]["vs_bare_median"] = rows[-1]["epoch_s"] / references["bare"]["epoch_s"]
        rows[-1]["vs_template"] = rows[-1]["epoch_s"] / references["template"]["epoch_s"]
        rows[-1]["process_vs_seed"] = rows[-1]["process_s"] / seed["process_s"]
    for r in rows:
        r["speedup_vs_seed"] = seed["epoch_s"] / r["epoch_s"]

    scale_rows = []
    for factor in scales:
        scaled = out / f"scale{factor}x"
        n = make_scaled(root, scaled, factor)
        overrides = ["impl=concise", f"trainer={trainer}", "trainer.max_epochs=3", "callbacks=none", "logger=csv"]
        proc, metrics = train_py(out, f"scale{factor}x", scaled, *overrides)
        shutil.rmtree(scaled)
        epoch = median_epoch([h["time_s"] for h in metrics["history"]])
        scale_rows.append({"factor": factor, "n_train": n, "epoch_s": epoch, "peak_rss_mb": proc["peak_rss_mb"]})
    if scale_rows:
        base = scale_rows[0]
        for s in scale_rows:
            s["epoch_s_per_base"] = s["epoch_s"] / base["epoch_s"]
            s["rss_growth_mb"] = s["peak_rss_mb"] - base["peak_rss_mb"]
            s["uint8_growth_mb"] = (s["n_train"] - base["n_train"]) * 28 * 28 / 2**20

    plain = references.get("plain")
    plain_job_s = plain["process_s"] if plain else None
    sweep_rows = sweeps(out, root, list(sweep_sizes), epochs, trainer, plain_job_s, sweep_callbacks)

    project = [r for r in rows if r["pipeline"] == "project"]
    results = {
        "machine": {
            "cpus": CORES,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data_dir": str(data_dir),
        "epochs": epochs,
        "repeats": repeats,
        "trainer": trainer,
        "batch_size": BATCH_SIZE,
        "rows": rows,
        "scale": scale_rows,
        "sweeps": sweep_rows,
        "targets": {"pass over training data <= 0.1 s": project_pass["pass_s"] <= 0.1},
    }
    for r in project:
        name = f"{r['name']}: epoch <= the template-style module's ({r['vs_template']:.2f}x; goal 0.5x)"
        results["targets"][name] = r["vs_template"] <= 1
    for r in sweep_rows:
        for launcher, least in SWEEP_TARGETS.get((r["jobs"], r["callbacks"]), {}).items():
            ratio = r["ratio"] if launcher == "basic" else r["joblib_ratio"]
            name = f"{r['jobs']}-job sweep, callbacks={r['callbacks']}: fused >= {least}x {launcher} ({ratio:.2f}x)"
            results["targets"][name] = ratio >= least
        if r["plain_loop_job_s"] is not None:
            results["targets"][
                f"{r['jobs']}-job sweep, callbacks={r['callbacks']}: fused per job ({r['fused_per_job_s']:.2f} s) "
                f"< the plain loop running that job alone ({r['plain_loop_job_s']:.2f} s)"
            ] = r["fused_per_job_s"] < r["plain_loop_job_s"]
        results["targets"][
            f"{r['jobs']}-job sweep, callbacks={r['callbacks']}: fused peak RSS ({r['fused_peak_rss_mb']:.0f} MB) "
            f"<= a lone run + K members ({r['memory_budget_mb']:.0f} MB)"
        ] = r["fused_peak_rss_mb"] <= r["memory_budget_mb"]
    return results


def _f(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(results: dict) -> str:
    """The side-by-side table, the scaling table and the targets, as markdown."""
    lines = [
        "| pipeline | epoch (median) | fastest epoch | images/s | one pass over the data | peak RSS | process time "
        "| imports | × template-style module | × bare LightningModule (fastest / median) | × plain loop "
        "| speed-up vs seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratio = f"{r['vs_bare']:.2f} / {r['vs_bare_median']:.2f}" if "vs_bare" in r else ""
        one_pass = f"{r['pass_s']:.3f} s" if r["pass_s"] else ""
        lines.append(
            f"| {r['name']} | {r['epoch_s']:.3f} s | {r['fastest_epoch_s']:.3f} s | {r['images_per_s']:,.0f} "
            f"| {one_pass} | {r['peak_rss_mb']:.0f} MB | {r['process_s']:.1f} s "
            f"| {_f(r['import_s'], '.2f')} s | {_f(r.get('vs_template'), '.2f')} | {ratio} "
            f"| {_f(r.get('vs_plain'), '.2f')} | {r['speedup_vs_seed']:.1f}× |"
        )
    if results["scale"]:
        lines += [
            "",
            "| training images | epoch (median) | × 1st row | peak RSS | RSS growth | uint8 size of the added images |",
            "|---|---|---|---|---|---|",
        ]
        for s in results["scale"]:
            lines.append(
                f"| {s['n_train']:,} ({s['factor']}×) | {s['epoch_s']:.3f} s | {s['epoch_s_per_base']:.2f} "
                f"| {s['peak_rss_mb']:.0f} MB | {s['rss_growth_mb']:.0f} MB | {s['uint8_growth_mb']:.0f} MB |"
            )
    if results.get("sweeps"):
        lines += [
            "",
            "| sweep | callbacks | basic launcher | joblib, a job per core | fused | × basic | × joblib "
            "| fused per job | peak RSS basic / fused | fused jobs within 1e-4 / 0.002 of basic (by lr) "
            "| largest gap fused-basic | largest gap scratch-concise |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["sweeps"]:
            a = r["agreement"]
            by_lr = ", ".join(f"lr {lr}: {n}/{k}" for lr, (n, k) in a["within_tolerance_by_lr"].items())
            lines.append(
                f"| {r['jobs']} jobs | {r['callbacks']} | {r['basic_s']:.1f} s "
                f"| {r['joblib_s']:.1f} s ({r['joblib_n_jobs']}) | {r['fused_s']:.1f} s "
                f"| {r['ratio']:.1f} | {r['joblib_ratio']:.1f} | {r['fused_per_job_s']:.2f} s "
                f"| {r['basic_peak_rss_mb']:.0f} / {r['fused_peak_rss_mb']:.0f} MB "
                f"| {a['within_tolerance']} of {a['jobs']} ({by_lr}) "
                f"| loss {a['max_loss_gap']:.1e}, acc {a['max_acc_gap']:.4f} "
                f"| loss {a['twins_max_loss_gap']:.1e}, acc {a['twins_max_acc_gap']:.4f} |"
            )
    lines += ["", *(f"- {'met' if ok else 'MISSED'}: {name}" for name, ok in results["targets"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REAL_DATA, help="a folder with the four *-ubyte.gz files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--scales", nargs="*", type=int, default=[1, 5, 10], help="training-set multiples")
    parser.add_argument("--trainer", choices=("cpu", "gpu", "default"), default="cpu", help="conf/trainer for train.py")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each plain, bare and project pipeline"
    )
    parser.add_argument(
        "--sweeps", nargs="*", type=int, choices=sorted(SWEEP_GRIDS), default=[32], help="sweeps of this many jobs"
    )
    parser.add_argument(
        "--sweep-callbacks", nargs="+", choices=SWEEP_CALLBACKS, default=list(SWEEP_CALLBACKS), help="their callbacks"
    )
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every pipeline; 0: torch's default")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        result = CASES[args.case](args.root, args.epochs, args.impl, args.data_dir, args.accelerator)
        args.json.write_text(json.dumps(result))
        return
    archives = [args.data_dir / f"{name}-ubyte.gz" for name in ("train-images-idx3", "t10k-images-idx3")]
    if not all(path.is_file() for path in archives):
        sys.exit(f"bench: no Fashion-MNIST archives in {args.data_dir}; pass --data-dir with the four *-ubyte.gz files")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    results = bench(
        args.data_dir,
        args.out,
        args.epochs,
        args.impls,
        args.scales,
        args.repeats,
        args.trainer,
        args.sweeps,
        args.sweep_callbacks,
    )
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
