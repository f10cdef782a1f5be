"""Merge end to end through real files: hive-io's writer makes the inputs (the delta as a
differencing hive), ``cimsnap hive merge`` merges, and the result is read back by our
reader, by hivex (Debian's python3-hivex / hivexml) and by regipy."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.errdefs import AlreadyExists, NotFound
from cimsnap.hive import (
    HiveFormatError,
    HiveModelError,
    HiveReader,
    check_hive,
    read_hive,
    write_hive,
)
from cimsnap.hive import cells as C
from cimsnap.hive.merge import HiveMergeError, merge, merge_files
from cimsnap.hive.query import os_build_number
from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_MULTI_SZ,
    REG_NONE,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
)
from tests.unit.hive.external import hivex_dump, model_dump, regipy_dump, regipy_expected
from tests.unit.hive.layer_model import hive_view, layer_marks, layered_view
from tests.unit.hive.layer_strategies import deltas_over, normal_hives

SEM = LayerSemantics


def sz(name: str, text: str) -> Value:
    return Value(name, REG_SZ, (text + "\0").encode("utf-16-le"))


def sample_base() -> Hive:
    root = Key("ROOT")
    cv = root.add_subkey(Key("Microsoft")).add_subkey(Key("Windows NT"))
    cv = cv.add_subkey(Key("CurrentVersion", class_name="cv-class"))
    cv.values = [sz("CurrentBuild", "17763"), sz("ProductName", "Server"), sz("Gone", "x")]
    svc = root.add_subkey(Key("Services"))
    for name in ("Straße", "µService", "Σίσυφος", "服务", "xboxgipsvc", "Dead"):
        key = svc.add_subkey(Key(name, class_name=f"{name}-class", last_written=5))
        key.values = [Value("Start", REG_DWORD, b"\x03\x00\x00\x00"), sz("DisplayName", name)]
        key.add_subkey(Key("Parameters")).values = [Value("Blob", REG_BINARY, b"\x00" * 40_000)]
    return Hive(root=root, minor_version=5, file_name="SOFTWARE", last_written=10)


def sample_delta() -> Hive:
    """Shaped like the real deltas of §4.3: pass-through keys are sem 0 + InheritClass."""
    root = Key("ROOT", inherit_class=True)
    cv = root.add_subkey(Key("MICROSOFT", inherit_class=True))
    cv = cv.add_subkey(Key("windows nt", inherit_class=True))
    cv = cv.add_subkey(Key("currentversion", inherit_class=True, last_written=99))
    cv.values = [sz("CURRENTBUILD", "20348"), Value("gone", REG_NONE, b"", tombstone=True)]
    svc = root.add_subkey(Key("services", inherit_class=True))
    svc.add_subkey(Key("DEAD", semantics=SEM.TOMBSTONE))
    svc.add_subkey(Key("STRASSE", semantics=SEM.TOMBSTONE))  # not Straße: no effect
    xbox = svc.add_subkey(Key("XboxGipSvc", semantics=SEM.SUPERSEDE_TREE, inherit_class=True))
    xbox.values = [sz("DisplayName", "replaced")]
    xbox.add_subkey(Key("a_subkey", semantics=SEM.SUPERSEDE_TREE))
    local = svc.add_subkey(Key("µSERVICE", semantics=SEM.SUPERSEDE_LOCAL, class_name="new"))
    local.values = [Value("Mode", REG_MULTI_SZ, "a\0b\0\0".encode("utf-16-le"))]
    local.add_subkey(Key("Extra"))
    # Final sigma has no uppercase in Windows' table: "ΣΊΣΥΦΟς" is Σίσυφος, "ΣΊΣΥΦΟΣ" is not.
    greek = svc.add_subkey(Key("ΣΊΣΥΦΟς", inherit_class=True))
    greek.values = [Value("displayname", REG_NONE, b"", tombstone=True)]
    svc.add_subkey(Key("新", class_name="c")).values = [sz("", "default")]
    return Hive(root=root, minor_version=6, flags=0x2, file_name="Software_Delta")


def write(tmp: Path, name: str, hive: Hive) -> Path:
    path = tmp / name
    path.write_bytes(write_hive(hive))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cimsnap", "hive", *args], capture_output=True, text=True
    )


def test_cli_merge_is_read_alike_by_our_reader_hivex_and_regipy(tmp_path: Path) -> None:
    base_path = write(tmp_path, "SOFTWARE_BASE", sample_base())
    delta_path = write(tmp_path, "Software_Delta", sample_delta())
    out = tmp_path / "merged"
    done = cli("merge", str(base_path), str(delta_path), str(out))
    assert done.returncode == 0, done.stderr
    assert check_hive(out.read_bytes()) == []
    merged = read_hive(out.read_bytes())
    expected = merge(read_hive(base_path.read_bytes()), read_hive(delta_path.read_bytes()))
    assert merged.root == expected.root
    assert not merged.is_differencing and layer_marks(merged.root) == []
    assert hivex_dump(out) == model_dump(merged)
    assert regipy_dump(out) == regipy_expected(merged)
    svc = merged.root.subkey("services")
    assert svc is not None
    assert sorted(k.name for k in svc.subkeys.values()) == sorted(
        ["Straße", "µService", "Σίσυφος", "服务", "xboxgipsvc", "新"]
    )
    xbox = svc.subkey("XBOXGIPSVC")
    assert xbox is not None and list(xbox.subkeys) == ["A_SUBKEY"]
    assert xbox.class_name == "xboxgipsvc-class"
    assert [v.name for v in svc.subkey("σίσυφος").values] == ["Start"]  # type: ignore[union-attr]
    local = svc.subkey("µservice")
    assert local is not None and local.class_name == "new"
    assert sorted(local.subkeys) == ["EXTRA", "PARAMETERS"]
    assert os_build_number(out) == 20348


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_merges_through_files_match_the_layered_view(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    base = data.draw(normal_hives())
    delta = data.draw(deltas_over(base))
    tmp = tmp_path_factory.mktemp("m")
    base_path, delta_path = write(tmp, "b", base), write(tmp, "d", delta)
    merge_files(base_path, delta_path, tmp / "out")
    got = read_hive((tmp / "out").read_bytes())
    base_back, delta_back = read_hive(base_path.read_bytes()), read_hive(delta_path.read_bytes())
    assert hive_view(got) == layered_view([base_back.root, delta_back.root])
    assert hivex_dump(tmp / "out") == model_dump(got)


def test_an_existing_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    base_path = write(tmp_path, "b", sample_base())
    delta_path = write(tmp_path, "d", sample_delta())
    out = tmp_path / "out"
    out.write_bytes(b"keep me")
    with pytest.raises(AlreadyExists):
        merge_files(base_path, delta_path, out)
    assert out.read_bytes() == b"keep me"
    done = cli("merge", str(base_path), str(delta_path), str(out))
    assert done.returncode == 1
    assert str(out) in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["b", "d", "out"]


def test_missing_inputs_are_not_found(tmp_path: Path) -> None:
    delta_path = write(tmp_path, "d", sample_delta())
    with pytest.raises(NotFound) as exc:
        merge_files(tmp_path / "nope", delta_path, tmp_path / "out")
    assert "nope" in str(exc.value)
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_a_malformed_delta_leaves_no_output_and_names_the_file(tmp_path: Path) -> None:
    base_path = write(tmp_path, "b", sample_base())
    bad = tmp_path / "d"
    bad.write_bytes(write_hive(sample_delta())[:6000])
    with pytest.raises(HiveFormatError) as exc:
        merge_files(base_path, bad, tmp_path / "out")
    assert any(str(bad) in note for note in exc.value.__notes__)
    assert sorted(os.listdir(tmp_path)) == ["b", "d"]
    done = cli("merge", str(base_path), str(bad), str(tmp_path / "out"))
    assert done.returncode == 1
    assert "delta" in done.stderr and "cimsnap hive check" in done.stderr


def test_the_garbage_collector_is_restored_after_success_and_failure(tmp_path: Path) -> None:
    base_path = write(tmp_path, "b", sample_base())
    delta_path = write(tmp_path, "d", sample_delta())
    assert gc.isenabled()
    merge_files(base_path, delta_path, tmp_path / "out")
    assert gc.isenabled()
    with pytest.raises(AlreadyExists):
        merge_files(base_path, delta_path, tmp_path / "out")
    (tmp_path / "bad").write_bytes(b"regf" + bytes(5000))
    with pytest.raises(HiveFormatError):
        merge_files(base_path, tmp_path / "bad", tmp_path / "out2")
    assert gc.isenabled()
    gc.disable()
    try:
        merge_files(base_path, delta_path, tmp_path / "out3")
        assert not gc.isenabled()
    finally:
        gc.enable()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_deltas_fail_cleanly_or_merge_into_a_valid_hive(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Byte damage past the base block: only the format/merge error classes, no output.

    HiveModelError is among them: the reader accepts an empty stored key name, which the
    writer then refuses for the merged hive (still a clean failure).
    """
    raw = bytearray(write_hive(sample_delta()))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(4096, len(raw) - 1))] = data.draw(st.integers(0, 255))
    tmp = tmp_path_factory.mktemp("f")
    base_path = write(tmp, "b", sample_base())
    (tmp / "d").write_bytes(bytes(raw))
    try:
        merge_files(base_path, tmp / "d", tmp / "out")
    except (HiveFormatError, HiveMergeError, HiveModelError):
        assert sorted(os.listdir(tmp)) == ["b", "d"]
    else:
        problems = check_hive((tmp / "out").read_bytes())
        assert [p for p in problems if p.severity == "error"] == []


def test_a_backslash_in_a_delta_key_name_is_a_format_error(tmp_path: Path) -> None:
    """The reader refuses the name (naming the nk cell) before the writer could."""
    raw = bytearray(write_hive(sample_delta()))
    dead = HiveReader(bytes(raw)).open_key(r"services\DEAD").offset
    raw[4096 + dead + 4 + C.NK_HEADER_FAST.size] = ord("\\")  # "DEAD" -> "\\EAD"
    (tmp_path / "d").write_bytes(bytes(raw))
    base_path = write(tmp_path, "b", sample_base())
    with pytest.raises(HiveFormatError) as exc:
        merge_files(base_path, tmp_path / "d", tmp_path / "out")
    assert (exc.value.what, exc.value.offset) == ("nk cell", dead)
    assert any("delta" in note for note in exc.value.__notes__)
    assert sorted(os.listdir(tmp_path)) == ["b", "d"]


def test_an_empty_base_file_is_a_format_error(tmp_path: Path) -> None:
    """§5 #29: a base layer may ship 0-byte hives; merging a delta onto one must fail."""
    (tmp_path / "b").write_bytes(b"")
    delta_path = write(tmp_path, "d", sample_delta())
    with pytest.raises(HiveFormatError) as exc:
        merge_files(tmp_path / "b", delta_path, tmp_path / "out")
    assert any("base" in note for note in exc.value.__notes__)
    assert sorted(os.listdir(tmp_path)) == ["b", "d"]
