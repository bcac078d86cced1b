"""The core's Hydra plugin, ``hydra/sweeper=grid``; Hydra finds it in the ``hydra_plugins`` namespace package."""
