"""The chapter's two softmax regressions, and what they share."""

MODEL_CLASS = "model_class"  # the checkpoint key that names the model's class
# the only classes a checkpoint may name, by import path, with what impl= calls them
MODELS = {
    "fashion_mnist_softmax.models.scratch.ScratchSoftmaxRegression": "scratch",
    "fashion_mnist_softmax.models.concise.ConciseSoftmaxRegression": "concise",
}
SCRATCH_OPTIMIZER = "fashion_mnist_softmax.models.scratch.SGD"  # impl=scratch's hand-written SGD, its only optimizer
# the same classes by the import paths that checkpoints of version 0.1 name (fashion_mnist_softmax.scratch...)
MOVED = {f"fashion_mnist_softmax.{path.split('.', 2)[2]}": path for path in MODELS}


def class_path(model: object) -> str:
    """The import path of a model's class, as checkpoints name it."""
    return f"{type(model).__module__}.{type(model).__qualname__}"
