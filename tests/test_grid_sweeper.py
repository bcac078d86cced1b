"""``hydra/sweeper=grid``, the project's default sweeper, as a Hydra plugin: Hydra's own sweeper and launcher test
suites pass with it, as they pass with the basic sweeper it extends."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite

from hydra_plugins.fashion_mnist_softmax.grid_sweeper import GridSweeper

# every test here: the suites' apps name no version base
pytestmark = pytest.mark.usefixtures("app_without_version_base")


def test_discovery():
    assert GridSweeper.__name__ in [cls.__name__ for cls in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize(("launcher_name", "overrides"), [("basic", ["hydra/sweeper=grid"])])
class TestGridSweeper(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    ("launcher_name", "overrides"), [("basic", ["hydra/sweeper=grid", "hydra.sweeper.max_batch_size=2"])]
)
class TestGridSweeperInBatches(BatchedSweeperTestSuite):
    pass
