"""Key and label limits (cimsnap.snapshots.labels), in process: refused before any change."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from cimsnap.errdefs import InvalidArgument
from cimsnap.snapshots.labels import (
    MAX_KEY_SIZE,
    MAX_LABEL_COUNT,
    MAX_LABELS_SIZE,
    checked_key,
    checked_labels,
)
from cimsnap.snapshots.snapshotter import Snapshotter
from tests.snapshotter_suite import expect_unchanged


@pytest.mark.parametrize(
    "key",
    ["", "a\0b", "a\nb", "\x1b[0m", "a\x7f", "\udc80", "k" * (MAX_KEY_SIZE + 1), "é" * 2049],
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        checked_key("key", key)


@pytest.mark.parametrize("key", ["k" * MAX_KEY_SIZE, "é" * 2048, "\u202e\uffff\U0010ffff", "a b"])
def test_good_keys(key: str) -> None:
    checked_key("key", key)


def test_label_set_limits() -> None:
    checked_labels({f"k{i}": "v" for i in range(MAX_LABEL_COUNT)})
    with pytest.raises(InvalidArgument):
        checked_labels({f"k{i}": "v" for i in range(MAX_LABEL_COUNT + 1)})
    big = {f"k{i:02d}": "v" * 4000 for i in range(MAX_LABELS_SIZE // 4004)}
    checked_labels(big)
    with pytest.raises(InvalidArgument):
        checked_labels({**big, "more": "v" * 4000})


def test_update_that_would_exceed_the_set_limit_rolls_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        sn.prepare("full", "", {f"k{i}": "v" for i in range(MAX_LABEL_COUNT)})
        info = sn.stat("full")
        extra = type(info)(
            info.kind, info.name, info.parent, {"extra": "x"}, info.created, info.updated
        )
        expect_unchanged(root, InvalidArgument, partial(sn.update, extra, ["labels.extra"]))
        assert sn.stat("full") == info
        # Replacing one label keeps the count: allowed.
        same = type(info)(
            info.kind, info.name, info.parent, {"k0": "w"}, info.created, info.updated
        )
        assert sn.update(same, ["labels.k0"]).labels["k0"] == "w"
        for key in ("a\0b", "k" * (MAX_KEY_SIZE + 1)):
            expect_unchanged(root, InvalidArgument, partial(sn.prepare, key))
            expect_unchanged(root, InvalidArgument, partial(sn.view, key, ""))
