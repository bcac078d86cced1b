"""The chapter's two softmax regressions, and what they share: a model is a Classifier in a module of this package,
its impl= choice the module's name (conf/impl/<name>.yaml)."""

from __future__ import annotations

import functools
import importlib
import pkgutil

MODEL_CLASS = "model_class"  # the checkpoint key that names the model's class
SCRATCH_MODEL = "fashion_mnist_softmax.models.scratch.ScratchSoftmaxRegression"
SCRATCH_OPTIMIZER = "fashion_mnist_softmax.models.scratch.SGD"  # impl=scratch's hand-written SGD, its only optimizer


def class_path(model: object) -> str:
    """The import path of a model's class, as checkpoints name it."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


@functools.cache
def models() -> dict[str, str]:
    """The only classes a checkpoint may name: each Classifier that a module of this package defines, by import path,
    with its impl= name. Checkpoints of version 0.1 name them by paths without ``models.``, which map here too."""
    from fashion_mnist_softmax.models.classifier import Classifier

    found = {}
    for module in pkgutil.iter_modules(__path__):
        members = vars(importlib.import_module(f"{__name__}.{module.name}")).values()
        for cls in members:
            model = isinstance(cls, type) and issubclass(cls, Classifier) and cls is not Classifier
            if model and cls.__module__.endswith(f".{module.name}"):
                path = f"{cls.__module__}.{cls.__qualname__}"
                found[path] = found[path.replace(".models.", ".", 1)] = module.name
    return found
