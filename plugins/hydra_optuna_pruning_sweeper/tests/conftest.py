"""Each test finds Hydra's global state (its version base, its config store) as the one before it found it: a test
that initializes Hydra with ``version_base=None`` would otherwise change where a later test's jobs run."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def hydra_state_kept(hydra_restore_singletons: None) -> None:
    pass
