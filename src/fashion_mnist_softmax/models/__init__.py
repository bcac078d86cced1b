"""The chapter's two softmax regressions, and what they share."""

# the only classes a checkpoint may name, by import path, with what impl= calls them; older checkpoints name the
# classes by their import paths before the package was split by concern
MODEL_CLASS = "model_class"  # the checkpoint key that names the model's class
MODELS = {
    "fashion_mnist_softmax.models.scratch.ScratchSoftmaxRegression": "scratch",
    "fashion_mnist_softmax.models.concise.ConciseSoftmaxRegression": "concise",
}


def class_path(model: object) -> str:
    """The import path of a model's class, as checkpoints name it."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


MOVED = {f"fashion_mnist_softmax.{path.split('.', 2)[2]}": path for path in MODELS}
