"""Where the project's epoch goes beyond a plain loop: add one layer at a time and time the epoch.

    python benchmarks/ladder.py [--data-root data]      # needs data/FashionMNIST/raw (run train.py once)

Each rung trains 5 epochs of the chapter's recipe (concise, batch 256, SGD lr 0.1) on the in-memory
batches of ``FashionMNISTDataModule`` and prints the median and the fastest training epoch without the first one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from fashion_mnist_softmax.data.datamodule import EpochBatchSampler, InMemoryFashionMNIST
from fashion_mnist_softmax.data.fashion_mnist import load_split
from fashion_mnist_softmax.models.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.run.guards import SaveOnInterrupt, StopOnDivergedLoss
from fashion_mnist_softmax.run.progress import EpochProgressBar
from fashion_mnist_softmax.run.record import EpochSummary

EPOCHS, BATCH_SIZE, LR = 5, 256, 0.1


class Bare(L.LightningModule):
    """nn.Linear and cross-entropy with automatic optimization, nothing else: Lightning's own floor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.linear(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class EpochClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self.start)


def plain(ds: InMemoryFashionMNIST) -> list[float]:
    torch.manual_seed(0)
    linear, times = nn.Linear(784, 10), []
    optimizer = torch.optim.SGD(linear.parameters(), lr=LR)
    sampler = EpochBatchSampler(len(ds), BATCH_SIZE, shuffle=True)
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        for index in sampler:
            x, y = ds[index]
            loss = nn.functional.cross_entropy(linear(x.flatten(1)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def lightning_fit(ds: InMemoryFashionMNIST, model: L.LightningModule, layers: set[str], tmp: str) -> list[float]:
    clock = EpochClock()
    callbacks: list[L.Callback] = [clock]
    if "callbacks" in layers:
        callbacks += [EpochSummary(), StopOnDivergedLoss(), SaveOnInterrupt(tmp)]
        callbacks += [ModelCheckpoint(tmp, monitor="train/acc", mode="max"), ModelCheckpoint(tmp, filename="last")]
    if "progress bar" in layers:
        callbacks.append(EpochProgressBar(refresh_rate=20))  # as in conf/callbacks/default.yaml
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp) if "logger" in layers else False,
        enable_checkpointing="callbacks" in layers,
        enable_progress_bar="progress bar" in layers,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    loader = DataLoader(ds, batch_size=None, sampler=EpochBatchSampler(len(ds), BATCH_SIZE, shuffle=True))
    trainer.fit(model, loader)
    return clock.times


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all rungs, interleaved")
    args = parser.parse_args()
    images, labels = load_split(args.data_root, train=True)
    ds = InMemoryFashionMNIST(images, labels)
    optimizer = {"_target_": "torch.optim.SGD", "lr": LR}

    def project(layers: set[str]):
        return lambda tmp: lightning_fit(ds, ConciseSoftmaxRegression(optimizer), layers, tmp)

    rungs = [
        ("plain PyTorch loop", lambda tmp: plain(ds)),
        ("bare LightningModule, automatic optimization", lambda tmp: lightning_fit(ds, Bare(), set(), tmp)),
        ("the project's module (torchmetrics, step loss)", project(set())),
        ("+ the project's callbacks (summary, guards, 2 checkpoints)", project({"callbacks"})),
        ("+ TensorBoard logger", project({"callbacks", "logger"})),
        ("+ progress bar", project({"callbacks", "logger", "progress bar"})),
    ]
    epochs: dict[str, list[float]] = {name: [] for name, _ in rungs}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of a shared machine hits every rung alike
        for name, run in rungs:
            with tempfile.TemporaryDirectory() as tmp:
                epochs[name] += run(tmp)[1:]
    print("| rung | epoch (median) | fastest epoch | × bare LightningModule (fastest / median) |\n|---|---|---|---|")
    bare = epochs[rungs[1][0]]
    for name, _ in rungs:
        median, fastest = statistics.median(epochs[name]), min(epochs[name])
        ratios = f"{fastest / min(bare):.2f} / {median / statistics.median(bare):.2f}"
        print(f"| {name} | {median:.3f} s | {fastest:.3f} s | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
