"""The shared snapshotter suite (tests/snapshotter_suite.py), run in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cimsnap.snapshots.snapshotter import Snapshotter
from tests.snapshotter_suite import *  # noqa: F403 - collects the suite's test_* functions


@pytest.fixture
def snapshotter_factory() -> Iterator[Callable[[Path], Snapshotter]]:
    opened: list[Snapshotter] = []

    def make(root: Path) -> Snapshotter:
        snapshotter = Snapshotter(root)
        opened.append(snapshotter)
        return snapshotter

    yield make
    for snapshotter in opened:
        snapshotter.close()
