"""Where the project's epoch goes beyond a plain loop: add one layer at a time and time the epoch.

    python benchmarks/ladder.py [--data-root data]      # needs data/FashionMNIST/raw (run train.py once)

Each rung trains 5 epochs of the chapter's recipe (concise, batch 256, SGD lr 0.1) on the in-memory
batches of ``FashionMNISTDataModule`` and prints the median training epoch without the first one.
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

from fashion_mnist_softmax.callbacks import EpochSummary
from fashion_mnist_softmax.checks import SaveOnInterrupt, StopOnDivergedLoss
from fashion_mnist_softmax.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.data import EpochBatchSampler, InMemoryFashionMNIST, load_split

EPOCHS, BATCH_SIZE, LR = 5, 256, 0.1


class Bare(L.LightningModule):
    """nn.Linear and cross-entropy, nothing else; ``manual=True`` skips Lightning's optimizer closure."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.linear, self.automatic_optimization = nn.Linear(784, 10), not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.linear(x.flatten(1)), y)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

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


def lightning_fit(
    ds: InMemoryFashionMNIST, model: L.LightningModule, layers: set[str], tmp: str, batches_per_step: int | None = None
) -> list[float]:
    clock = EpochClock()
    callbacks: list[L.Callback] = [clock]
    if "callbacks" in layers:
        callbacks += [EpochSummary(), StopOnDivergedLoss(), SaveOnInterrupt(tmp)]
        callbacks += [ModelCheckpoint(tmp, monitor="train/acc", mode="max"), ModelCheckpoint(tmp, filename="last")]
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp) if "logger" in layers else False,
        enable_checkpointing="callbacks" in layers,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    sampler = EpochBatchSampler(len(ds), BATCH_SIZE, shuffle=True, batches_per_step=batches_per_step)
    loader = DataLoader(ds, batch_size=None, sampler=sampler)
    trainer.fit(model, loader)
    return clock.times


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--batches-per-step", type=int, default=16, help="as data.batches_per_step")
    args = parser.parse_args()
    chunk = args.batches_per_step  # minibatches per training step in the chunked rungs
    images, labels = load_split(args.data_root, train=True)
    ds = InMemoryFashionMNIST(images, labels)
    optimizer = {"_target_": "torch.optim.SGD", "lr": LR}
    rungs = [
        ("plain PyTorch loop", lambda tmp: plain(ds)),
        ("bare LightningModule, manual optimization", lambda tmp: lightning_fit(ds, Bare(manual=True), set(), tmp)),
        ("bare LightningModule, automatic optimization", lambda tmp: lightning_fit(ds, Bare(), set(), tmp)),
        (
            "the project's module, 1 minibatch per step (manual optimization, torchmetrics)",
            lambda tmp: lightning_fit(ds, ConciseSoftmaxRegression(optimizer), set(), tmp, batches_per_step=1),
        ),
        (
            f"the project's module, {chunk} minibatches per step",
            lambda tmp: lightning_fit(ds, ConciseSoftmaxRegression(optimizer), set(), tmp, batches_per_step=chunk),
        ),
        (
            "+ the project's callbacks (summary, guards, 2 checkpoints)",
            lambda tmp: lightning_fit(ds, ConciseSoftmaxRegression(optimizer), {"callbacks"}, tmp, chunk),
        ),
        (
            "+ TensorBoard logger",
            lambda tmp: lightning_fit(ds, ConciseSoftmaxRegression(optimizer), {"callbacks", "logger"}, tmp, chunk),
        ),
    ]
    print("| rung | epoch (median) | × plain loop |\n|---|---|---|")
    base = None
    for name, run in rungs:
        with tempfile.TemporaryDirectory() as tmp:
            epoch = statistics.median(run(tmp)[1:])
        base = base or epoch
        print(f"| {name} | {epoch:.3f} s | {epoch / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
