"""The Fashion-MNIST files (offline install, validation) and the DataModule (splits, batches, resumable shuffles)."""

from __future__ import annotations

import functools
import gzip
import multiprocessing as mp
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fashion_mnist_softmax.data.datamodule import EpochBatchSampler, FashionMNISTDataModule
from fashion_mnist_softmax.data.fashion_mnist import (
    RAW_FILES,
    DataError,
    ensure_raw_files,
    get_fashion_mnist_labels,
    raw_dir,
)
from fashion_mnist_softmax.files import write_json_atomic


def datamodule(archives: Path, root: Path, **kwargs) -> FashionMNISTDataModule:
    kwargs = {"val_size": 64, "batch_size": 32, "download": False, "expected_sizes": None, **kwargs}
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


def test_one_search_folder_given_as_a_string_is_searched(fake_archives, tmp_path):
    """``data.search_dirs=/share/fmnist`` on the command line is a string, not a list of one-letter folders."""
    dm = FashionMNISTDataModule(str(tmp_path), search_dirs=str(fake_archives), download=False, expected_sizes=None)
    assert dm.search_dirs == [str(fake_archives)]
    dm.prepare_data()
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_written_files_are_readable_as_the_umask_says(fake_archives, tmp_path):
    """mkstemp makes owner-only files: the extracted data and metrics.json are read by other accounts too."""
    old = os.umask(0o022)
    try:
        raw = ensure_raw_files(tmp_path, [str(fake_archives)], download=False)
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((raw / "t10k-labels-idx1-ubyte").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644


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

    monkeypatch.setattr("fashion_mnist_softmax.data.fashion_mnist._download", refuse)
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
    with pytest.raises(DataError, match="holds 128 items, expected 10000"):
        dm.setup("fit")


def test_parallel_preparation_of_one_root_all_succeed(fake_archives, tmp_path):
    # the workers import only what ensure_raw_files needs, not this module (torchvision, Lightning)
    prepare = functools.partial(ensure_raw_files, tmp_path, [str(fake_archives)], download=False)
    with mp.get_context("spawn").Pool(4) as pool:
        raw_dirs = pool.starmap(prepare, [()] * 4)
    assert all(len(list(raw.iterdir())) >= 4 for raw in raw_dirs)
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
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert dm.state_dict() == {"normalize": True, "mean": dm.mean, "std": dm.std} and 0.2 < dm.mean < 0.8


def test_a_saved_state_gives_the_preprocessing_without_the_training_set(fake_archives, tmp_path):
    trained = datamodule(fake_archives, tmp_path, normalize=True)
    trained.setup("fit")
    fresh = datamodule(fake_archives, tmp_path, normalize=False)
    fresh.load_state_dict(trained.state_dict())
    fresh.setup("test")
    assert fresh.train_set is None, "testing with known preprocessing reads no training images"
    batch = next(iter(fresh.test_dataloader()))
    expected = next(iter(trained.test_dataloader()))
    assert torch.equal(fresh.on_after_batch_transfer(batch, 0)[0], trained.on_after_batch_transfer(expected, 0)[0])


def test_shuffle_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        s = EpochBatchSampler(100, 10, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return torch.cat(list(s))

    assert torch.equal(order(1, 3), order(1, 3))
    assert not torch.equal(order(1, 3), order(1, 4))
    assert not torch.equal(order(1, 3), order(2, 3))
    assert sorted(order(1, 3).tolist()) == list(range(100))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("n", "world_size"), [(100, 1), (101, 2), (7, 3), (96, 1)])
def test_len_counts_the_batches_each_rank_gets(n, world_size, shuffle):
    for rank in range(world_size):
        sampler = EpochBatchSampler(n, 8, shuffle, 0, rank, world_size)
        assert len(sampler) == len(list(sampler))


def test_a_sampler_resumes_its_epoch_where_its_state_says():
    sampler = EpochBatchSampler(100, 8, shuffle=True, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    served = iter(sampler)
    first = [next(served) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "served": 5}

    resumed = EpochBatchSampler(100, 8, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = list(resumed)
    assert [b.tolist() for b in first + rest] == [b.tolist() for b in whole]
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(resumed), "the next epoch starts from its first batch"

    other_epoch = EpochBatchSampler(100, 8, shuffle=True, seed=3)
    other_epoch.load_state_dict({"epoch": 1, "served": 13})  # an epoch-end checkpoint of the epoch before
    other_epoch.set_epoch(2)
    assert [b.tolist() for b in other_epoch] == [b.tolist() for b in whole]


def test_ranks_see_disjoint_shards():
    train = [torch.cat(list(EpochBatchSampler(101, 8, True, 0, rank, 2))) for rank in (0, 1)]
    assert len(train[0]) == len(train[1]) == 50 and not set(train[0].tolist()) & set(train[1].tolist())
    evaluation = [torch.cat(list(EpochBatchSampler(101, 8, False, 0, rank, 2))) for rank in (0, 1)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(101))
