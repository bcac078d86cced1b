"""``hydra/sweeper=optuna`` on current Optuna, with pruning; Hydra finds it in the ``hydra_plugins`` namespace
package. A job reaches its trial with :func:`trial`."""

from .job_trial import trial

__all__ = ["trial"]
__version__ = "0.1.0"
