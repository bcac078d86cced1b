"""Fashion-MNIST as a LightningDataModule that holds the images in memory as uint8.

A batch is one ``index_select`` and one cast: the values of ``transforms.ToTensor()``, much faster.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import torch
from annotated_types import Ge, Gt
from torch.utils.data import DataLoader

from fashion_mnist_softmax.data.fashion_mnist import DEFAULT_SEARCH_DIRS, SPLIT_SIZES, ensure_raw_files, load_split
from fashion_mnist_softmax.errors import UserError


def standardise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(x - mean) / std`` in place, skipped for the identity (0, 1)."""
    return x if (mean, std) == (0.0, 1.0) else x.sub_(mean).div_(std)


class EpochBatchSampler:
    """Yields index tensors, one per batch, shuffled from (seed, epoch) and sharded across ranks.

    An order drawn from (seed, epoch), not from a running RNG, makes every epoch reproducible. Under
    DDP each rank takes every ``world_size``-th index; training drops the tail so that all ranks take
    the same number of steps. Its state is the batches served this epoch: a run resumed from the
    middle of an epoch goes on with the next batch.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.served = 0, 0
        self._resume: dict[str, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)[self.rank :: self.world_size]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        return order[: self.n - self.n % self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        # lazily: Lightning creates the first epoch's iterator before it calls set_epoch
        resume, self._resume = self._resume, None
        self.served = resume["served"] if resume and resume["epoch"] == self.epoch else 0
        for batch in self._indices().split(self.batch_size)[self.served :]:
            self.served += 1
            yield batch

    def __len__(self) -> int:
        per_rank = self.n // self.world_size if self.shuffle else len(range(self.rank, self.n, self.world_size))
        return -(-per_rank // self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch Lightning saves in checkpoints and restores on resume."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


class InMemoryFashionMNIST(torch.utils.data.Dataset):
    """Images held as one uint8 tensor; ``ds[index_tensor]`` returns a whole batch of pixels in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """An index tensor of shape S gives images of shape (*S, 1, 28, 28) and labels of shape S."""
        if isinstance(index, torch.Tensor):  # index_select gathers a batch several times faster than indexing
            flat = index.reshape(-1).to(self.images.device)
            images = self.images.index_select(0, flat).view(*index.shape, *self.images.shape[1:])
            labels = self.labels.index_select(0, flat).view(index.shape)
        else:
            images, labels = self.images[index], self.labels[index]
        return images.unsqueeze(-3).float().div_(255), labels

    def to(self, device: torch.device) -> InMemoryFashionMNIST:
        """Move the uint8 images and the labels to ``device`` (a no-op where they are), so batches are cut there."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST with a seeded validation hold-out and in-memory batches.

    ``val_size=0`` is the chapter's setting: no hold-out, and validation runs on the test set.
    ``normalize=True`` standardises every batch with the training images' pixel mean and std. Those
    two numbers are the DataModule's state, which Lightning saves in every checkpoint: a checkpoint
    carries the preprocessing its model was trained with, and a DataModule given that state uses it.
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: Annotated[int, Ge(1)] = 256,
        val_size: Annotated[int, Ge(0)] = 5000,
        split_seed: Annotated[int, Ge(0)] = 0,
        shuffle_seed: Annotated[int, Ge(0)] = 0,
        normalize: bool = False,
        search_dirs: Sequence[str] = DEFAULT_SEARCH_DIRS,
        download: bool = True,
        download_timeout: Annotated[float, Gt(0)] = 10.0,
        expected_sizes: Mapping[str, int] | None = SPLIT_SIZES,  # None: any size
    ) -> None:
        super().__init__()
        self.root, self.batch_size, self.val_size = Path(root), batch_size, val_size
        self.split_seed, self.shuffle_seed, self.normalize = split_seed, shuffle_seed, normalize
        # one folder given on the command line (data.search_dirs=/share/fmnist) arrives as a string
        self.search_dirs = [search_dirs] if isinstance(search_dirs, str) else list(search_dirs)
        self.download, self.download_timeout = download, download_timeout
        self.expected_sizes = dict(expected_sizes or {})
        # with normalize, set by setup from the training images, or restored from a checkpoint's state
        self.mean, self.std = (None, None) if normalize else (0.0, 1.0)
        self.train_set: InMemoryFashionMNIST | None = None
        self.test_set: InMemoryFashionMNIST | None = None

    def prepare_data(self) -> None:
        ensure_raw_files(self.root, self.search_dirs, self.download, self.download_timeout)

    def setup(self, stage: str | None = None) -> None:
        """Load the test set; and the training set, except to test or predict with known preprocessing."""
        if self.test_set is None:
            self.prepare_data()  # on every rank: under DDP, Lightning runs prepare_data on one rank only
            self.test_set = InMemoryFashionMNIST(*load_split(self.root, False, self.expected_sizes.get("test")))
            self.val_set = self.test_set
        if self.train_set is None and (stage not in ("test", "predict") or self.mean is None):
            self._setup_training(*load_split(self.root, True, self.expected_sizes.get("train")))

    def _setup_training(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if not 0 <= self.val_size < len(labels):
            raise UserError(
                f"data.val_size={self.val_size} is out of range: it must be at least 0 and less than the "
                f"{len(labels)} training images. Use 0 to validate on the test set, as the chapter does."
            )
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
        self.train_set = InMemoryFashionMNIST(images[train_idx], labels[train_idx])
        if self.val_size:
            self.val_set = InMemoryFashionMNIST(images[val_idx], labels[val_idx])
        if self.mean is None:
            pixels = self.train_set.images.float().div_(255)
            self.mean, self.std = pixels.mean().item(), pixels.std().item()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return standardise(x, self.mean, self.std), y

    def state_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalize, self.mean, self.std = state["normalize"], float(state["mean"]), float(state["std"])

    def batch_sampler(self, n: int, shuffle: bool, rank: int, world_size: int) -> EpochBatchSampler:
        """The index batches of a set of ``n`` images."""
        return EpochBatchSampler(n, self.batch_size, shuffle, self.shuffle_seed, rank, world_size)

    def _loader(self, ds: InMemoryFashionMNIST, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if trainer is not None:
            ds.to(trainer.strategy.root_device)  # on a GPU: one transfer of the whole set, no per-batch copies
        sampler = self.batch_sampler(len(ds), shuffle, rank, world)
        return (ResumableDataLoader if shuffle else DataLoader)(ds, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
