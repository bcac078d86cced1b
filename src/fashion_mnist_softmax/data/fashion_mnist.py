"""Fashion-MNIST on disk: its ten classes and its four IDX files.

The files are found offline first (a Debian package, a cluster share), downloaded by torchvision
only if that fails, extracted atomically under a file lock, validated, and read by torchvision's
own reader.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.files import temp_file_beside

if TYPE_CHECKING:  # torch loads with torchvision, once the data is read
    import torch

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
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
SPLIT_SIZES = {"train": 60000, "test": 10000}  # the images of each split


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
    fd, tmp = temp_file_beside(dest)  # readable by others as any file the user makes: data folders are shared
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
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

    From: files already there; ``*-ubyte.gz`` archives there or in ``search_dirs``; torchvision's
    download. Under a file lock, so that parallel jobs on one root all succeed.
    """
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    with FileLock(str(raw / ".prepare.lock")):
        for name, gz in _archives(root, search_dirs).items():
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
            raise unavailable(root, search_dirs, missing, f"the download failed ({error})")
    return raw


def _missing(raw: Path) -> list[str]:
    return [name for name in RAW_FILES if not _is_file(raw / name)]


def _archives(root: str | Path, search_dirs: Sequence[str]) -> dict[str, Path | None]:
    """The archive of each IDX file missing from ``<root>/FashionMNIST/raw``: the first found there or in
    ``search_dirs``, or None."""
    places = _places(root, search_dirs)
    return {
        name: next((p / f"{name}.gz" for p in places if _is_file(p / f"{name}.gz")), None)
        for name in _missing(raw_dir(root))
    }


def _places(root: str | Path, search_dirs: Sequence[str]) -> list[Path]:
    """Where the archives are looked for, in order: the raw folder, then ``search_dirs``."""
    return [raw_dir(root), *(Path(d).expanduser() for d in search_dirs)]


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; not in a folder this user may not enter."""
    try:
        return path.is_file()
    except PermissionError:
        return False


def unfound(root: str | Path, search_dirs: Sequence[str]) -> list[str]:
    """The IDX files that neither ``<root>/FashionMNIST/raw`` nor an archive there or in ``search_dirs`` holds."""
    return [name for name, gz in _archives(root, search_dirs).items() if gz is None]


def unavailable(root: str | Path, search_dirs: Sequence[str], missing: list[str], why: str) -> DataError:
    tried = ", ".join(map(str, _places(root, search_dirs)))
    return DataError(
        f"Fashion-MNIST is not available: {', '.join(missing)} not found in {tried}, and {why}. Fix it in one of "
        f"two ways: install the Debian/Ubuntu package (`sudo apt-get install dataset-fashion-mnist`), or copy the "
        f"four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        f"t10k-labels-idx1-ubyte.gz to {raw_dir(root)}/."
    )


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
