"""Fashion-MNIST as a LightningDataModule that holds the images in memory as uint8.

The raw IDX files are found offline first (a Debian package, a cluster share), downloaded by
torchvision only if that fails, validated, and then loaded by torchvision's own reader.
Each batch is cut from one uint8 tensor with one indexing operation and one cast, which gives
exactly the values of ``transforms.ToTensor()`` at a fraction of the per-sample cost.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from torch.utils.data import DataLoader

from fashion_mnist_softmax.errors import UserError

CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
RAW_FILES = {
    "train-images-idx3-ubyte": IMAGES_MAGIC,
    "train-labels-idx1-ubyte": LABELS_MAGIC,
    "t10k-images-idx3-ubyte": IMAGES_MAGIC,
    "t10k-labels-idx1-ubyte": LABELS_MAGIC,
}
DEFAULT_SEARCH_DIRS = ("/usr/share/datasets/fashion-mnist",)


def get_fashion_mnist_labels(labels: Sequence[int] | torch.Tensor) -> list[str]:
    """Map class indices to the chapter's text labels."""
    return [CLASS_NAMES[int(i)] for i in labels]


class DataError(UserError):
    """The data set is missing, truncated or corrupted."""


def raw_dir(root: str | Path) -> Path:
    """Where torchvision's ``FashionMNIST`` reads the four uncompressed IDX files."""
    return Path(root) / "FashionMNIST" / "raw"


def check_idx(path: Path, magic: int, count: int | None = None) -> int:
    """Check an IDX file's header against its size; return the number of items it holds."""
    header_len = 16 if magic == IMAGES_MAGIC else 8
    try:
        with open(path, "rb") as f:
            header = f.read(header_len)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"Cannot read the Fashion-MNIST file {path}: {e}.") from None
    if len(header) < header_len:
        raise DataError(f"The Fashion-MNIST file {path} is truncated: it has no complete IDX header. {_REPLACE_HINT}")
    found_magic, n = struct.unpack(">II", header[:8])
    if found_magic != magic:
        raise DataError(
            f"The Fashion-MNIST file {path} is not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file "
            f"(magic number {found_magic}, expected {magic}). {_REPLACE_HINT}"
        )
    item = 1
    if magic == IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", header[8:16])
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"The Fashion-MNIST file {path} holds {rows}x{cols} images, expected 28x28. {_REPLACE_HINT}"
            )
        item = rows * cols
    if size != header_len + n * item:
        raise DataError(
            f"The Fashion-MNIST file {path} is truncated or corrupted: its header promises {n} items "
            f"({header_len + n * item} bytes) but the file has {size} bytes. {_REPLACE_HINT}"
        )
    if count is not None and n != count:
        raise DataError(f"The Fashion-MNIST file {path} holds {n} items, expected {count}. {_REPLACE_HINT}")
    return n


_REPLACE_HINT = "Move it aside and run again to install a fresh copy, or replace it with the original file."


def _extract(gz: Path, dest: Path) -> None:
    """Decompress ``gz`` to ``dest`` atomically: a temp file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        check_idx(Path(tmp), RAW_FILES[dest.name])
        os.replace(tmp, dest)
    except (OSError, EOFError, zlib.error, DataError) as e:
        Path(tmp).unlink(missing_ok=True)
        detail = e.message if isinstance(e, DataError) else str(e) or type(e).__name__
        raise DataError(
            f"The Fashion-MNIST archive {gz} is truncated or corrupted ({detail}). {_REPLACE_HINT}"
        ) from None


def _download(root: Path, timeout: float) -> None:
    from torchvision.datasets import FashionMNIST

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    finally:
        socket.setdefaulttimeout(old)


def ensure_raw_files(
    root: str | Path, search_dirs: Sequence[str] = DEFAULT_SEARCH_DIRS, download: bool = True, timeout: float = 10.0
) -> Path:
    """Make the four IDX files exist in ``<root>/FashionMNIST/raw``; return that folder.

    Order: files already there; ``*-ubyte.gz`` archives there or in ``search_dirs``; torchvision's
    download. Runs under a file lock so that parallel jobs on one root all succeed, and never
    replaces a file that exists.
    """
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    places = [raw, *(Path(d).expanduser() for d in search_dirs)]
    with FileLock(str(raw / ".prepare.lock")):
        for name in _missing(raw):
            gz = next((p / f"{name}.gz" for p in places if (p / f"{name}.gz").is_file()), None)
            if gz is not None:
                _extract(gz, raw / name)
        if not _missing(raw):
            return raw
        error = "download switched off (data.download=false)"
        if download:
            try:
                _download(Path(root), timeout)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        if missing := _missing(raw):
            tried = ", ".join(str(p) for p in places)
            raise DataError(
                f"Fashion-MNIST is not available: {', '.join(missing)} not found in {tried}, and the download "
                f"failed ({error}). Fix it in one of two ways: install the Debian/Ubuntu package "
                f"(`sudo apt-get install dataset-fashion-mnist`), or copy the four files "
                f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                f"t10k-labels-idx1-ubyte.gz to {raw}/."
            )
    return raw


def _missing(raw: Path) -> list[str]:
    return [name for name in RAW_FILES if not (raw / name).is_file()]


def load_split(root: str | Path, train: bool, expected_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one split's IDX files, then load them with torchvision: (uint8 N×28×28, int64 N)."""
    from torchvision.datasets import FashionMNIST

    prefix = "train" if train else "t10k"
    raw = raw_dir(root)
    images_path, labels_path = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    n_images = check_idx(images_path, IMAGES_MAGIC, expected_size)
    n_labels = check_idx(labels_path, LABELS_MAGIC, expected_size)
    if n_images != n_labels:
        raise DataError(
            f"{images_path} holds {n_images} images but {labels_path} holds {n_labels} labels. {_REPLACE_HINT}"
        )
    ds = FashionMNIST(str(root), train=train, download=False)
    labels = ds.targets.long()
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"The Fashion-MNIST file {labels_path} has labels outside 0-{NUM_CLASSES - 1}. {_REPLACE_HINT}")
    return ds.data, labels


class EpochBatchSampler:
    """Yields index tensors, one per batch, shuffled from (seed, epoch) and sharded across ranks.

    Deriving the order from (seed, epoch) instead of a running RNG makes every epoch reproducible,
    also after a resume. Lightning calls ``set_epoch`` at the start of each epoch. Under DDP each
    rank takes every ``world_size``-th index; training drops the tail so that all ranks run the
    same number of steps, evaluation keeps every index exactly once.

    With ``batches_per_step=k`` it yields (k, batch_size) index tensors instead: k consecutive
    batches of the same order, which one training step runs as k SGD steps. A smaller last batch
    comes alone, as a (1, n) tensor.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_per_step: int | None = None,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.batches_per_step = batches_per_step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)[self.rank :: self.world_size]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        return order[: self.n - self.n % self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        # lazily: Lightning creates the first epoch's iterator before it calls set_epoch, which matters on resume
        indices = self._indices()
        if self.batches_per_step is None:
            yield from indices.split(self.batch_size)
            return
        full = len(indices) // self.batch_size * self.batch_size
        if full:
            yield from indices[:full].view(-1, self.batch_size).split(self.batches_per_step)
        if full < len(indices):
            yield indices[full:].unsqueeze(0)

    def __len__(self) -> int:
        per_rank = self.n // self.world_size if self.shuffle else len(range(self.rank, self.n, self.world_size))
        if self.batches_per_step is None:
            return -(-per_rank // self.batch_size)
        full, tail = divmod(per_rank, self.batch_size)
        return -(-full // self.batches_per_step) + (tail > 0)


def _take(t: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    """``t[index]``, through ``index_select`` for an index tensor: it gathers a batch several times faster."""
    if isinstance(index, torch.Tensor) and index.dim() >= 1:
        return t.index_select(0, index.flatten().to(t.device)).view(*index.shape, *t.shape[1:])
    return t[index]


class InMemoryFashionMNIST(torch.utils.data.Dataset):
    """Images held as one uint8 tensor; ``ds[index_tensor]`` returns a whole float batch.

    An index of shape S gives images of shape (*S, 1, 28, 28) and labels of shape S.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _take(self.images, index).unsqueeze(-3).float().div_(255)
        if self.mean != 0.0 or self.std != 1.0:
            x = x.sub_(self.mean).div_(self.std)
        return x, _take(self.labels, index)

    def to(self, device: torch.device) -> InMemoryFashionMNIST:
        """Move the uint8 images and the labels to ``device`` (a no-op where they are), so batches are cut there."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST with a seeded validation hold-out and in-memory batches.

    ``val_size=0`` is the chapter's setting: no hold-out, and validation runs on the test set.
    The training loader yields ``batches_per_step`` minibatches at a time, stacked as
    (k, batch_size, 1, 28, 28) images and (k, batch_size) labels; the model takes one SGD step on
    each (see ``SoftmaxRegression.training_step``). The evaluation loaders yield plain batches.
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 256,
        batches_per_step: int = 16,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        normalize: bool = False,
        num_workers: int = 0,
        search_dirs: Sequence[str] = DEFAULT_SEARCH_DIRS,
        download: bool = True,
        download_timeout: float = 10.0,
        expected_sizes: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.root, self.batch_size, self.val_size = Path(root), batch_size, val_size
        self.batches_per_step = batches_per_step
        self.split_seed, self.shuffle_seed, self.normalize = split_seed, shuffle_seed, normalize
        self.num_workers, self.search_dirs = num_workers, list(search_dirs)
        self.download, self.download_timeout = download, download_timeout
        self.expected_sizes = dict(expected_sizes or {})
        self.train_set: InMemoryFashionMNIST | None = None

    def prepare_data(self) -> None:
        ensure_raw_files(self.root, self.search_dirs, self.download, self.download_timeout)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ensure_raw_files(self.root, self.search_dirs, self.download, self.download_timeout)
        images, labels = load_split(self.root, train=True, expected_size=self.expected_sizes.get("train"))
        test_images, test_labels = load_split(self.root, train=False, expected_size=self.expected_sizes.get("test"))
        if not 0 <= self.val_size < len(labels):
            raise UserError(
                f"data.val_size={self.val_size} is out of range: it must be at least 0 and less than the "
                f"{len(labels)} training images. Use 0 to validate on the test set, as the chapter does."
            )
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
        train_images = images[train_idx]
        mean, std = 0.0, 1.0
        if self.normalize:
            pixels = train_images.float().div_(255)
            mean, std = pixels.mean().item(), pixels.std().item()
        self.train_set = InMemoryFashionMNIST(train_images, labels[train_idx], mean, std)
        self.test_set = InMemoryFashionMNIST(test_images, test_labels, mean, std)
        self.val_set = (
            InMemoryFashionMNIST(images[val_idx], labels[val_idx], mean, std) if self.val_size else self.test_set
        )

    def _loader(self, ds: InMemoryFashionMNIST, shuffle: bool, batches_per_step: int | None = None) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if trainer is not None:
            ds.to(trainer.strategy.root_device)  # on a GPU: one transfer of the whole set, no per-batch copies
        sampler = EpochBatchSampler(len(ds), self.batch_size, shuffle, self.shuffle_seed, rank, world, batches_per_step)
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, batches_per_step=self.batches_per_step)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
