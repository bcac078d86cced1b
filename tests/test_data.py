"""FashionMNISTDataModule: offline install, validation, splits and the in-memory fast path."""

from __future__ import annotations

import gzip
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import torch
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fashion_mnist_softmax.data import (
    RAW_FILES,
    DataError,
    EpochBatchSampler,
    FashionMNISTDataModule,
    ensure_raw_files,
    get_fashion_mnist_labels,
    raw_dir,
)


def datamodule(archives: Path, root: Path, **kwargs) -> FashionMNISTDataModule:
    kwargs = {"val_size": 64, "batch_size": 32, "download": False, **kwargs}
    return FashionMNISTDataModule(root=str(root), search_dirs=[str(archives)], **kwargs)


def test_labels_are_the_chapters():
    assert get_fashion_mnist_labels([0, 9, 5]) == ["t-shirt", "ankle boot", "sandal"]
    assert get_fashion_mnist_labels(torch.tensor([3])) == ["dress"]


def test_offline_install_extracts_into_torchvision_layout(fake_archives, tmp_path):
    raw = ensure_raw_files(tmp_path, [str(fake_archives)], download=False)
    assert raw == tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(RAW_FILES)
    ds = FashionMNIST(str(tmp_path), train=True, download=False)
    assert ds.data.shape == (512, 28, 28) and ds.data.dtype == torch.uint8
    with gzip.open(fake_archives / "train-images-idx3-ubyte.gz") as f:
        assert (raw / "train-images-idx3-ubyte").read_bytes() == f.read()


def test_nothing_found_gives_one_clear_message(tmp_path):
    empty = tmp_path / "nowhere"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        ensure_raw_files(tmp_path / "data", [str(empty)], download=False)
    msg = e.value.message
    assert str(empty) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(raw_dir(tmp_path / "data")) in msg and "download" in msg


def test_failed_download_is_reported_quickly(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("fashion_mnist_softmax.data._download", refuse)
    with pytest.raises(DataError, match="network is unreachable"):
        ensure_raw_files(tmp_path, [], download=True)


@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_corrupted_raw_file_is_named_and_left_alone(fake_archives, tmp_path, damage):
    raw = ensure_raw_files(tmp_path, [str(fake_archives)], download=False)
    victim = raw / "t10k-images-idx3-ubyte"
    data = victim.read_bytes()
    bad = data[:-100] if damage == "truncate" else b"\x00\x00\x08\x01" + data[4:]
    victim.write_bytes(bad)
    dm = datamodule(fake_archives, tmp_path)
    with pytest.raises(DataError, match=str(victim)):
        dm.setup("fit")
    assert victim.read_bytes() == bad


def test_truncated_archive_is_named_and_nothing_is_written(fake_archives, tmp_path):
    archives = tmp_path / "archives"
    shutil.copytree(fake_archives, archives)
    gz = archives / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError, match=str(gz)):
        ensure_raw_files(tmp_path / "data", [str(archives)], download=False)
    assert not (raw_dir(tmp_path / "data") / "train-labels-idx1-ubyte").exists()
    assert not [p for p in raw_dir(tmp_path / "data").iterdir() if p.suffix == ".tmp"]


def test_expected_sizes_are_checked(fake_archives, tmp_path):
    dm = datamodule(fake_archives, tmp_path, expected_sizes={"train": 60000, "test": 10000})
    with pytest.raises(DataError, match="expected 60000"):
        dm.setup("fit")


def _prepare(args: tuple[str, str]) -> int:
    archives, root = args
    return len(list(ensure_raw_files(root, [archives], download=False).iterdir()))


def test_parallel_preparation_of_one_root_all_succeed(fake_archives, tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_prepare, [(str(fake_archives), str(tmp_path))] * 4)
    assert all(r >= 4 for r in results)
    assert FashionMNIST(str(tmp_path), train=False).data.shape == (128, 28, 28)


def test_split_is_disjoint_fixed_and_test_is_separate(fake_archives, tmp_path):
    a, b = datamodule(fake_archives, tmp_path), datamodule(fake_archives, tmp_path)
    a.setup("fit")
    b.setup("fit")
    assert len(a.train_set) == 512 - 64 and len(a.val_set) == 64 and len(a.test_set) == 128
    assert torch.equal(a.val_set.images, b.val_set.images)
    train_rows = {bytes(img.numpy()) for img in a.train_set.images}
    assert not any(bytes(img.numpy()) in train_rows for img in a.val_set.images)


def test_val_size_zero_validates_on_the_test_set(fake_archives, tmp_path):
    dm = datamodule(fake_archives, tmp_path, val_size=0)
    dm.setup("fit")
    assert dm.val_set is dm.test_set and len(dm.train_set) == 512


def test_batches_equal_torchvision_totensor(fake_archives, tmp_path):
    dm = datamodule(fake_archives, tmp_path, val_size=0)
    dm.setup("fit")
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    reference = FashionMNIST(str(tmp_path), train=False, transform=transforms.ToTensor())
    for i in (0, 7, 31):
        ref_x, ref_y = reference[i]
        assert torch.equal(x[i], ref_x) and y[i] == ref_y


def test_normalize_standardises_with_training_statistics(fake_archives, tmp_path):
    dm = datamodule(fake_archives, tmp_path, normalize=True, batch_size=1000)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_shuffle_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        s = EpochBatchSampler(100, 10, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return torch.cat(list(s))

    assert torch.equal(order(1, 3), order(1, 3))
    assert not torch.equal(order(1, 3), order(1, 4))
    assert not torch.equal(order(1, 3), order(2, 3))
    assert sorted(order(1, 3).tolist()) == list(range(100))


@pytest.mark.parametrize("batches_per_step", [None, 1, 3, 100])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("n", "world_size"), [(100, 1), (101, 2), (7, 3), (96, 1)])
def test_len_counts_the_batches_each_rank_gets(n, world_size, shuffle, batches_per_step):
    for rank in range(world_size):
        sampler = EpochBatchSampler(n, 8, shuffle, 0, rank, world_size, batches_per_step)
        assert len(sampler) == len(list(sampler))


@pytest.mark.parametrize(("n", "world_size"), [(100, 1), (101, 2), (96, 1), (5, 1)])
def test_steps_stack_the_same_batches_in_the_same_order(n, world_size):
    """(k, batch) index chunks hold exactly the plain batches; a smaller last batch comes alone."""
    for rank in range(world_size):
        plain = EpochBatchSampler(n, 8, True, 3, rank, world_size)
        chunked = EpochBatchSampler(n, 8, True, 3, rank, world_size, batches_per_step=3)
        plain.set_epoch(2)
        chunked.set_epoch(2)
        steps = list(chunked)
        assert all(s.dim() == 2 and 1 <= len(s) <= 3 for s in steps)
        assert [b.tolist() for step in steps for b in step] == [b.tolist() for b in plain]
        assert all(s.shape[1] == 8 for s in steps[:-1])


def test_a_step_of_batches_is_one_stacked_tensor(fake_archives, tmp_path):
    dm = datamodule(fake_archives, tmp_path, batches_per_step=4)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 32, 1, 28, 28) and labels.shape == (4, 32)
    x, y = dm.train_set[list(EpochBatchSampler(len(dm.train_set), 32, True, dm.shuffle_seed))[1]]
    assert torch.equal(images[1], x) and torch.equal(labels[1], y)
    assert next(iter(dm.val_dataloader()))[0].shape == (32, 1, 28, 28)  # evaluation keeps plain batches


def test_ranks_see_disjoint_shards():
    train = [torch.cat(list(EpochBatchSampler(101, 8, True, 0, rank, 2))) for rank in (0, 1)]
    assert len(train[0]) == len(train[1]) == 50 and not set(train[0].tolist()) & set(train[1].tolist())
    evaluation = [torch.cat(list(EpochBatchSampler(101, 8, False, 0, rank, 2))) for rank in (0, 1)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(101))
