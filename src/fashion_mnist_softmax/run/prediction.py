"""Label new images or test-set images with a saved model: ``python predict.py ckpt_path=… images=[a.png]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fashion_mnist_softmax import console
from fashion_mnist_softmax.checkpoints import load_model
from fashion_mnist_softmax.config.checks import as_list, check_indices
from fashion_mnist_softmax.data.datamodule import FashionMNISTDataModule, InMemoryFashionMNIST, standardise
from fashion_mnist_softmax.data.fashion_mnist import CLASS_NAMES
from fashion_mnist_softmax.data.images import image_files, read_image
from fashion_mnist_softmax.files import write_json_atomic

PREDICTIONS_FILE = "predictions.json"


def top_k(model: torch.nn.Module, x: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` likeliest classes of each image with their softmax probabilities."""
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [(CLASS_NAMES[i], p) for i, p in zip(ix.tolist(), vs.tolist(), strict=True)]
        for ix, vs in zip(indices, values, strict=True)
    ]


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Print the top classes of ``cfg.images`` and of the test images ``cfg.indices``; write them as JSON.

    The model and its preprocessing come from the checkpoint alone.
    """
    console.quiet()
    model, data_state = load_model(cfg.ckpt_path)
    files = image_files(as_list(cfg.images))
    rows = [{"source": str(f)} for f in files]
    images = [torch.from_numpy(read_image(f)) for f in files]
    if indices := as_list(cfg.indices):
        datamodule: FashionMNISTDataModule = instantiate(cfg.data)
        datamodule.setup("test")
        test_set = datamodule.test_set
        check_indices(indices, len(test_set))
        rows += [{"source": f"test[{i}]", "true": CLASS_NAMES[int(test_set.labels[i])]} for i in indices]
        images += list(test_set.images[indices])
    x, _ = InMemoryFashionMNIST(torch.stack(images), torch.zeros(len(images)))[torch.arange(len(images))]
    tops = top_k(model, standardise(x, data_state["mean"], data_state["std"]), cfg.top_k)
    for row, top in zip(rows, tops, strict=True):
        row["top"] = top
        truth = f" (true: {row['true']})" if "true" in row else ""
        print(f"{row['source']}{truth}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    write_json_atomic(path := Path(cfg.paths.output_dir) / PREDICTIONS_FILE, rows)
    print(f"predictions: {path}")
    return rows
