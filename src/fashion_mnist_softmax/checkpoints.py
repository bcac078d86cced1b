"""Checkpoints that describe themselves, loaded safely: a checkpoint alone rebuilds the model it holds.

A checkpoint holds the model's class by import path, its hyperparameters and weights, and the
DataModule's state (the preprocessing). Loading is weights-only, and the class is looked up among this
project's own models: nothing in a checkpoint chooses code to import or run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from fashion_mnist_softmax.classifier import MODEL_CLASS, Classifier
from fashion_mnist_softmax.concise import ConciseSoftmaxRegression
from fashion_mnist_softmax.data import FashionMNISTDataModule
from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.scratch import ScratchSoftmaxRegression

MODELS: dict[str, type[Classifier]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls for cls in (ScratchSoftmaxRegression, ConciseSoftmaxRegression)
}
DATA_STATE = FashionMNISTDataModule.__qualname__  # Lightning saves a DataModule's state under its class name


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of this project with ``weights_only=True``; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}: the file does not exist. Give ckpt_path=<run dir>/checkpoints/last.ckpt "
            f"or another .ckpt file in a run's checkpoints/ folder."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler fails on garbage in many ways
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("\n")[0].split(". ")[0][:160]
        raise UserError(
            f"The checkpoint {path} cannot be loaded: it is truncated, corrupted, not a PyTorch checkpoint, or "
            f"holds Python objects, which weights-only loading refuses to run ({type(e).__name__}: {first_line}). "
            f"Use another checkpoint, e.g. last.ckpt or the best one in the same folder."
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters", MODEL_CLASS, DATA_STATE} <= ckpt.keys():
        raise UserError(
            f"The file {path} is not a checkpoint of this project: it lacks the model class, hyperparameters, "
            f"weights or data preprocessing that train.py saves in every checkpoint (checkpoints written before "
            f"they described themselves lack the first and the last). Give a .ckpt file written by train.py."
        )
    return ckpt


def model_class(ckpt: dict[str, Any], path: str | Path) -> type[Classifier]:
    """The project's model class that a checkpoint names; anything else is refused."""
    name = ckpt[MODEL_CLASS]
    if name not in MODELS:
        raise UserError(
            f"The checkpoint {path} names the model class {name!r}, which is not one of this project's models "
            f"({', '.join(MODELS)}). Only those are built from a checkpoint. Give a .ckpt file written by train.py."
        )
    return MODELS[name]


def load_model(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """The model saved in a checkpoint, in eval mode, and the DataModule state (preprocessing) it was trained with."""
    ckpt = load_checkpoint(path)
    cls = model_class(ckpt, path)
    try:
        model = cls(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise UserError(
            f"The checkpoint {path} does not fit {cls.__name__}: {str(e).splitlines()[0]}. Give a .ckpt file "
            f"written by train.py."
        ) from None
    return model.eval(), ckpt[DATA_STATE]
