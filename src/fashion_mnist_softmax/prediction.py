"""Label new images or test-set images with a saved model: ``python predict.py ckpt_path=… images=[a.png]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_mnist_softmax import console
from fashion_mnist_softmax import metrics as m
from fashion_mnist_softmax.checkpoints import load_model
from fashion_mnist_softmax.config import as_list, check_predict_config, image_files
from fashion_mnist_softmax.data import FashionMNISTDataModule, InMemoryFashionMNIST, standardise
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.fashion_mnist import CLASS_NAMES, IMAGE_SIZE

PREDICTIONS_FILE = "predictions.json"


def to_fashion_mnist(image: Image.Image) -> np.ndarray:
    """Convert any picture to a 28×28 uint8 image the way Fashion-MNIST was made.

    Grayscale; a light object on a dark background (product photos on white are inverted, judged
    by the border); cropped to the object, padded to a centred square and resized so that the
    object's longer side fills the 28 pixels.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image)
    if image.mode.startswith(("I", "F")):  # 16- or 32-bit pixels, which convert("L") clips at 255: stretched
        pixels = np.asarray(image, dtype=np.float64)
        gray = ((pixels - pixels.min()) / (np.ptp(pixels) or 1.0) * 255).round().astype(np.uint8)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:
        gray = 255 - gray
    rows, cols = np.nonzero(gray > 0.1 * max(int(gray.max()), 1))
    if len(rows):
        gray = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(gray.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - gray.shape[0]) // 2, (side - gray.shape[1]) // 2
    square[top : top + gray.shape[0], left : left + gray.shape[1]] = gray
    resized = Image.fromarray(square).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.array(resized, dtype=np.uint8)  # writable, as torch.from_numpy wants it (it warns otherwise)


def read_image(path: Path) -> np.ndarray:
    """One image file as a Fashion-MNIST-like 28×28 uint8 array; a clear error if it is not an image."""
    try:
        with Image.open(path) as image:
            return to_fashion_mnist(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(
            f"The file {path} cannot be read as an image ({type(e).__name__}: {e}). Give PNG, JPEG or other "
            f"image files, or remove this one from images=."
        ) from None


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
    check_predict_config(cfg)
    model, data_state = load_model(cfg.ckpt_path)
    files = image_files(cfg.images)
    rows = [{"source": str(f)} for f in files]
    images = [torch.from_numpy(read_image(f)) for f in files]
    if indices := as_list(cfg.indices):
        datamodule: FashionMNISTDataModule = instantiate(cfg.data)
        datamodule.setup("test")
        test_set = datamodule.test_set
        if bad := [i for i in indices if not 0 <= i < len(test_set)]:
            raise UserError(
                f"indices={bad} are out of range: the test set has {len(test_set)} images, numbered 0 to "
                f"{len(test_set) - 1}."
            )
        rows += [{"source": f"test[{i}]", "true": CLASS_NAMES[int(test_set.labels[i])]} for i in indices]
        images += list(test_set.images[indices])
    x, _ = InMemoryFashionMNIST(torch.stack(images), torch.zeros(len(images)))[torch.arange(len(images))]
    tops = top_k(model, standardise(x, data_state["mean"], data_state["std"]), cfg.top_k)
    for row, top in zip(rows, tops, strict=True):
        row["top"] = top
        truth = f" (true: {row['true']})" if "true" in row else ""
        print(f"{row['source']}{truth}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    m.write_json_atomic(Path(cfg.paths.output_dir) / PREDICTIONS_FILE, rows)
    return rows
