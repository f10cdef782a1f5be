"""Snapshotter.list stops matching once ``cancelled`` is set (the server sets it when the
client cancels or its deadline passes)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cimsnap.errdefs import Canceled
from cimsnap.snapshots.snapshotter import Snapshotter


def test_list_raises_canceled_once_cancelled(tmp_path: Path) -> None:
    with Snapshotter(tmp_path / "root") as sn:
        sn.prepare("a")
        cancelled = threading.Event()
        assert [i.name for i in sn.list(["name~=a"], cancelled=cancelled)] == ["a"]
        cancelled.set()
        with pytest.raises(Canceled):
            sn.list(["name~=a"], cancelled=cancelled)
        # No filter means nothing to match: the listing is returned as it is.
        assert [i.name for i in sn.list([], cancelled=cancelled)] == ["a"]
