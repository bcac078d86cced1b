"""The project's test fixtures (synthetic Fashion-MNIST, train.py runs), from the core's tests/helpers.py: this
launcher is tested against the project's train.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from helpers import *  # noqa: F403  (the fixtures)
