"""Scale: a synthetic SOFTWARE-like base of 200,000+ keys merged with a delta that uses
every layer semantic, through files; the outcome is checked against the delta's plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimsnap.devtools.synthetic_hive import count_keys, software_base, software_delta
from cimsnap.hive import check_hive, read_hive, write_hive
from cimsnap.hive.merge import merge_files
from cimsnap.hive.query import os_build_number

SCALE = 0.56  # software_base(1.0) is ~361k keys


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_merge_200k_keys(tmp_path: Path) -> None:
    base = software_base(SCALE)
    assert count_keys(base.root) >= 200_000
    delta, plan = software_delta(base, SCALE)
    base_path, delta_path = tmp_path / "SOFTWARE_BASE", tmp_path / "Software_Delta"
    base_path.write_bytes(write_hive(base))
    delta_path.write_bytes(write_hive(delta))
    out = tmp_path / "merged"

    merge_files(base_path, delta_path, out)

    merged = read_hive(out.read_bytes())
    root = merged.root
    for path in plan.tombstoned:
        assert root.find(path) is None
    for path in plan.superseded_tree:
        key = root.find(path)
        assert key is not None and list(key.subkeys) == ["PROXYSTUBCLSID32"]
        assert [v.name for v in key.values] == [""]
        assert key.class_name == base.root.find(path).class_name  # type: ignore[union-attr]
    for path in plan.superseded_local:
        key, old = root.find(path), base.root.find(path)
        assert key is not None and old is not None
        assert len(key.values) == 6
        assert set(key.subkeys) == set(old.subkeys) | {"UPDATES"}
    for path, name in plan.value_tombstones:
        key = root.find(path)
        assert key is not None and key.value(name) is None
    for path in plan.edited:
        assert root.find(path).value("Added") is not None  # type: ignore[union-attr]
    for path in plan.added:
        assert root.find(path) is not None
    removed = sum(count_keys(base.root.find(p)) for p in plan.tombstoned)  # type: ignore[arg-type]
    replaced = sum(count_keys(base.root.find(p)) - 2 for p in plan.superseded_tree)  # type: ignore[arg-type]
    added = sum(count_keys(delta.root.find(p)) for p in plan.added)  # type: ignore[arg-type]
    added += len(plan.superseded_local)  # each gained an "Updates" child
    assert count_keys(root) == count_keys(base.root) - removed - replaced + added
    assert os_build_number(out) == 20348


def test_synthetic_hives_are_clean_and_deterministic() -> None:
    base = software_base(0.02)
    delta, plan = software_delta(base, 0.02)
    base_bytes, delta_bytes = write_hive(base), write_hive(delta)
    assert check_hive(base_bytes) == [] and check_hive(delta_bytes) == []
    assert read_hive(delta_bytes).is_differencing
    assert plan.tombstoned and plan.superseded_tree and plan.superseded_local and plan.added
    assert write_hive(software_base(0.02)) == base_bytes
