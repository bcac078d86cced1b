"""A logger that takes images as W&B's does, ``log_image(key, images, step)``, and writes what it got to a file:
one line per image, its key and step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger


class ImageNames(Logger):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: list[Any], step: int | None = None) -> None:
        with self.path.open("a") as file:
            file.write(f"{key} {step}\n")
