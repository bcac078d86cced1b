"""Hydra plugins of fashion-mnist-softmax; Hydra finds them in the ``hydra_plugins`` namespace package."""
