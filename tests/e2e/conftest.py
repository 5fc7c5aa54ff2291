"""Every test under tests/e2e is marked `e2e` (it drives a real `manta serve` or cluster over
loopback), so that the fast lane (`./run.sh test --fast`) can leave them out by marker."""

from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(HERE):
            item.add_marker(pytest.mark.e2e)
