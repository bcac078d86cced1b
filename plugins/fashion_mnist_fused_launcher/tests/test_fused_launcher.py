"""The launcher as a Hydra plugin: found by Hydra, configured by a dataclass, and passing Hydra's own launcher test
suites, whose apps are not the project's train.py: each of their jobs runs alone, as under the basic launcher."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite
from omegaconf import OmegaConf

from hydra_plugins.fashion_mnist_fused_launcher.fused_launcher import FusedLauncher

from helpers import ROOT

# every test here: the suites' apps name no version base
pytestmark = pytest.mark.usefixtures("app_without_version_base")


def test_discovery():
    assert FusedLauncher.__name__ in [cls.__name__ for cls in Plugins.instance().discover(Launcher)]


@pytest.mark.usefixtures("hydra_restore_singletons")  # Hydra's version base, set by the composition, goes back
def test_the_config_is_a_dataclass_in_the_config_store():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=fused"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.fashion_mnist_fused_launcher.fused_launcher.FusedLauncher"
    assert not (ROOT / "conf" / "hydra" / "launcher").exists(), "no YAML file beside the registered dataclass"
    node = ConfigStore.instance().load("hydra/launcher/fused.yaml").node
    assert OmegaConf.get_type(node).__name__ == "FusedLauncherConf"


@pytest.mark.parametrize(("launcher_name", "overrides"), [("fused", [])])
class TestFusedLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(("launcher_name", "overrides"), [("fused", ["hydra.sweeper.max_batch_size=2"])])
class TestFusedLauncherInBatches(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [({}, ["-m", "hydra/job_logging=hydra_debug", "hydra/job_logging=disabled", "hydra/launcher=fused"])],
)
class TestFusedLauncherIntegration(IntegrationTestSuite):
    pass


APP = """import sys

import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    print("torch loaded:", "torch" in sys.modules)


main()
"""


def test_another_apps_jobs_run_alone_without_loading_torch(tmp_path):
    """Only train.py's jobs fuse: a sweep of another app's runs them as the basic launcher does, without the
    seconds that torch and Lightning take to load."""
    (tmp_path / "app.py").write_text(APP)
    command = [sys.executable, "app.py", "-m", "hydra/launcher=fused", "+x=1,2", f"hydra.sweep.dir={tmp_path / 's'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("torch loaded: False") == 2, result.stdout[-2000:]
