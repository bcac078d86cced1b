"""Checkpoints that describe themselves, loaded safely: a checkpoint alone rebuilds the model it holds.

A checkpoint holds the model's class by import path, its hyperparameters and weights, and the
DataModule's state (the preprocessing). Loading is weights-only, and the class is looked up among this
project's own models: nothing in a checkpoint chooses code to import or run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from fashion_mnist_softmax.errors import UserError
from fashion_mnist_softmax.models import MODEL_CLASS, models

DATA_STATE = "FashionMNISTDataModule"  # Lightning saves a DataModule's state under its class name
# what Lightning reads to resume a run, besides the weights: a fused job's checkpoint holds the weights only
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "callbacks")


def existing_checkpoint(path: str | Path) -> Path:
    """``path``, a file that exists; checked before torch is imported to read it."""
    if Path(path).is_dir():
        inside = Path(path) / "last.ckpt"  # a run's checkpoints/ folder, or its run dir
        raise UserError(
            f"ckpt_path={path} is a folder: give a checkpoint file in it, such as "
            f"{inside if inside.is_file() else Path(path) / 'checkpoints' / 'last.ckpt'}."
        )
    if not Path(path).is_file():
        raise UserError(
            f"No checkpoint at {path}: the file does not exist. Give ckpt_path=<run dir>/checkpoints/last.ckpt "
            f"or another .ckpt file in a run's checkpoints/ folder."
        )
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of this project with ``weights_only=True``; one clear error for anything else."""
    import torch  # here, not at the top: the config's checks look for a checkpoint file before torch is loaded

    path = existing_checkpoint(path)
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
            f"weights or data preprocessing that train.py saves in every checkpoint (those of its early "
            f"versions lack the first and the last). Give a .ckpt file written by train.py."
        )
    return ckpt


def model_class(ckpt: dict[str, Any], path: str | Path) -> str:
    """The import path of the project's model class that a checkpoint names; anything else is refused."""
    name = ckpt[MODEL_CLASS]
    if name not in models():
        known = ", ".join(p for p in models() if ".models." in p)
        raise UserError(
            f"The checkpoint {path} names the model class {name!r}, which is not one of this project's models "
            f"({known}). Only those are built from a checkpoint. Give a .ckpt file written by train.py."
        )
    return name if ".models." in name else name.replace(".", ".models.", 1)


def check_checkpoint(path: str | Path, impl_target: str | None = None, resume: bool = False) -> None:
    """A checkpoint of this project's; where ``impl_target`` is given, one that holds a model of that impl (for
    train.py to test it, or to resume it: then also with what Lightning needs to resume)."""
    ckpt = load_checkpoint(path)
    found = models()[model_class(ckpt, path)]
    if impl_target is None:
        return
    if resume and not set(RESUME_KEYS) <= ckpt.keys():
        raise UserError(
            f"The checkpoint {path} holds the weights only, as the fused launcher (hydra/launcher=fused) writes "
            f"them: it lacks the optimizer state, the training loop's progress and the callbacks' states that "
            f"resuming needs. It can be evaluated (eval.py ckpt_path={path}) or used for prediction (predict.py "
            f"ckpt_path={path}), but not resumed. Train anew, or resume a checkpoint written by a lone train.py run."
        )
    if found != (asked := models().get(impl_target)):
        raise UserError(
            f"The checkpoint {path} holds a {found} model, but impl={asked} was asked for. "
            f"Use impl={found} to {'resume' if resume else 'test'} it, or a checkpoint of a {asked} run."
        )


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The model saved in a checkpoint, in eval mode, and the DataModule state (preprocessing) it was trained with."""
    ckpt = load_checkpoint(path)
    cls = get_class(model_class(ckpt, path))  # one of models(), never a class the checkpoint chose
    try:
        model = cls(**ckpt["hyper_parameters"])
        model.on_load_checkpoint(ckpt)  # as Lightning does before it loads the weights
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise UserError(
            f"The checkpoint {path} does not fit {cls.__name__}: {str(e).splitlines()[0]}. Give a .ckpt file "
            f"written by train.py."
        ) from None
    return model.eval(), ckpt[DATA_STATE]
