"""``hydra/launcher=fused``: a sweep's jobs of fashion-mnist-softmax trained together, each with its lone run's
outputs. Hydra finds it in the ``hydra_plugins`` namespace package."""

__version__ = "0.1.0"
