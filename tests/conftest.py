"""The core's test fixtures (tests/helpers.py), and the order the test files are handed out in."""

from __future__ import annotations

import pytest

from helpers import *  # noqa: F403  (the fixtures)

# the files that take longest, started first: pytest-xdist hands out whole files (--dist loadfile) in the order
# collected, and a long file handed out last keeps one worker busy while the other has nothing left
LONGEST_FIRST = (
    "test_ddp.py",
    "test_fused.py",
    "test_faults_sweeps.py",
    "test_pruning.py",
    "test_resume.py",
    "test_bench.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
