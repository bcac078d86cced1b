"""The user's own pictures for predict.py: found by name, and made to look like Fashion-MNIST."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_mnist_softmax.data.fashion_mnist import IMAGE_SIZE
from fashion_mnist_softmax.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(names: Iterable[Any]) -> list[Path]:
    """The files that ``images=`` names, a named folder's images in name order."""
    files = []
    for name in names:
        path = Path(str(name)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(
                    f"The folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
                    f"Give image files or a folder of images."
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"The image {path} does not exist. Check the path given in images=.")
    return files


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


def open_image(path: Path) -> Image.Image:
    """An image file, its header read and its pixels not yet; a clear error if it is not an image, or if it has more
    pixels than Pillow's guard against decompression bombs (``Image.MAX_IMAGE_PIXELS``), of which Pillow would only
    warn below twice that many: such an image is refused from its header, before its pixels are read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UserError(
            f"The image {path} is too large to read: it has more than {Image.MAX_IMAGE_PIXELS:,} pixels, the most "
            f"that predict.py reads (Pillow's guard against decompression bombs), and each image becomes 28×28 "
            f"anyway. Shrink it first, or remove it from images=."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def read_image(path: Path) -> np.ndarray:
    """One image file (:func:`open_image`) as a Fashion-MNIST-like 28×28 uint8 array."""
    try:
        with open_image(path) as image:
            return to_fashion_mnist(image)
    except (OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> UserError:
    return UserError(
        f"The file {path} cannot be read as an image ({type(e).__name__}: {e}). Give PNG, JPEG or other "
        f"image files, or remove this one from images=."
    )
