"""``cimsnap hive dump|get|merge|check``: output, exit codes and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cimsnap.cli import main
from cimsnap.hive import read_hive, write_hive
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

SEM = LayerSemantics
CV = r"Microsoft\Windows NT\CurrentVersion"


def sz(name: str, text: str) -> Value:
    return Value(name, REG_SZ, (text + "\0").encode("utf-16-le"))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = Key("ROOT")
    cv = root.add_subkey(Key("Microsoft", class_name="msclass")).add_subkey(Key("Windows NT"))
    cv = cv.add_subkey(Key("CurrentVersion"))
    cv.values = [
        sz("CurrentBuild", "20348"),
        Value("", REG_DWORD, b"\x05\x00\x00\x00"),
        Value("Paths", REG_MULTI_SZ, "a\0b\0\0".encode("utf-16-le")),
        Value("Blob", REG_BINARY, b"\x01\xab"),
        sz("Ünïcode", "wert"),
    ]
    root.add_subkey(Key("Doomed")).add_subkey(Key("Child"))
    path = tmp_path / "SOFTWARE"
    path.write_bytes(write_hive(Hive(root=root)))
    return path


@pytest.fixture
def delta(tmp_path: Path) -> Path:
    root = Key("ROOT", inherit_class=True)
    ms = root.add_subkey(Key("microsoft", inherit_class=True))
    ms.values = [Value("Old", REG_NONE, b"", tombstone=True)]
    root.add_subkey(Key("DOOMED", semantics=SEM.TOMBSTONE))
    tree = root.add_subkey(Key("New", semantics=SEM.SUPERSEDE_TREE, inherit_class=True))
    tree.values = [sz("x", "y")]
    path = tmp_path / "Software_Delta"
    path.write_bytes(write_hive(Hive(root=root, flags=0x2)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["hive", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dump_text_shows_keys_values_and_classes(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    code, out, _ = run(capsys, "dump", str(base))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("# normal hive")
    assert "\\ROOT" in lines
    assert "  Microsoft  [class='msclass']" in lines
    assert '        = "CurrentBuild" REG_SZ "20348"' in lines
    assert "        = (default) REG_DWORD 5 (0x5)" in lines
    assert '        = "Paths" REG_MULTI_SZ ["a", "b"]' in lines
    assert '        = "Blob" REG_BINARY 01 ab' in lines
    assert '        = "Ünïcode" REG_SZ "wert"' in lines


def test_dump_of_one_key(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    code, out, _ = run(capsys, "dump", str(base), "microsoft\\WINDOWS NT")
    assert code == 0
    assert out.splitlines()[1:3] == ["\\microsoft\\WINDOWS NT", "  CurrentVersion"]
    assert "Doomed" not in out


def test_dump_json_shows_layer_marks_and_tombstones(
    capsys: pytest.CaptureFixture[str], delta: Path
) -> None:
    code, out, _ = run(capsys, "dump", str(delta), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["differencing"] is True and doc["flags"] == 2
    keys = {k["path"]: k for k in doc["keys"]}
    assert set(keys) == {"", "microsoft", "DOOMED", "New"}
    assert keys["DOOMED"]["semantics"] == "tombstone"
    assert keys["New"]["semantics"] == "supersede-tree"
    assert keys["New"]["inherit_class"] is True
    assert keys["microsoft"]["semantics"] == "merge"
    assert keys["microsoft"]["values"] == [{"name": "Old", "tombstone": True}]
    assert keys["New"]["values"][0] == {
        "name": "x",
        "tombstone": False,
        "type": REG_SZ,
        "type_name": "REG_SZ",
        "data": "y",
        "raw": "79000000",
    }


def test_dump_text_marks_differencing_keys(capsys: pytest.CaptureFixture[str], delta: Path) -> None:
    code, out, _ = run(capsys, "dump", str(delta))
    assert code == 0
    assert "  DOOMED  [tombstone]" in out
    assert "  New  [supersede-tree, inherit-class]" in out
    assert '    = "Old" <tombstone>' in out


def test_dump_missing_key_fails_with_a_hint(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    code, _, err = run(capsys, "dump", str(base), "No\\Such")
    assert code == 1
    assert "No\\\\Such" in err and "cimsnap hive dump" in err


def test_get_prints_the_typed_value(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    assert run(capsys, "get", str(base), CV.upper(), "currentbuild")[:2] == (0, "20348\n")
    assert run(capsys, "get", str(base), CV, "")[:2] == (0, "5\n")
    assert run(capsys, "get", str(base), CV, "paths")[:2] == (0, "a\nb\n")
    assert run(capsys, "get", str(base), CV, "blob")[:2] == (0, "01ab\n")


def test_get_of_a_tombstone_value_says_so(capsys: pytest.CaptureFixture[str], delta: Path) -> None:
    code, out, err = run(capsys, "get", str(delta), "Microsoft", "old")
    assert (code, out) == (0, "")
    assert "tombstone" in err
    code, out, _ = run(capsys, "get", str(delta), "Microsoft", "old", "--json")
    assert json.loads(out)["tombstone"] is True


def test_get_json(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    code, out, _ = run(capsys, "get", str(base), CV, "Paths", "--json")
    assert code == 0
    assert json.loads(out) == {
        "key": CV,
        "name": "Paths",
        "type": REG_MULTI_SZ,
        "type_name": "REG_MULTI_SZ",
        "tombstone": False,
        "data": ["a", "b"],
        "raw": "a\0b\0\0".encode("utf-16-le").hex(),
    }
    code, out, _ = run(capsys, "get", str(base), CV, "Blob", "--json")
    assert json.loads(out)["data"] == {"hex": "01ab"}


@pytest.mark.parametrize(
    ("key", "value"), [(CV, "Missing"), ("Microsoft\\Missing", "CurrentBuild")]
)
def test_get_missing_fails_naming_what(
    capsys: pytest.CaptureFixture[str], base: Path, key: str, value: str
) -> None:
    code, out, err = run(capsys, "get", str(base), key, value)
    assert (code, out) == (1, "")
    assert "Missing" in err and "cimsnap hive dump" in err


def test_missing_file_fails_with_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in (["dump", "x"], ["get", "x", "k", "v"], ["check", "x"]):
        code, _, err = run(capsys, *[str(tmp_path / a) if a == "x" else a for a in argv])
        assert code == 1
        assert str(tmp_path / "x") in err


def test_merge_then_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, base: Path, delta: Path
) -> None:
    out_path = tmp_path / "merged"
    assert run(capsys, "merge", str(base), str(delta), str(out_path))[0] == 0
    merged = read_hive(out_path.read_bytes())
    assert sorted(merged.root.subkeys) == ["MICROSOFT", "NEW"]
    assert merged.root.subkey("new").class_name is None  # type: ignore[union-attr]
    code, out, err = run(capsys, "check", str(out_path))
    assert (code, out, err) == (0, "", "")
    code, _, err = run(capsys, "merge", str(base), str(delta), str(out_path))
    assert code == 1 and "already exists" in err


def test_check_lists_problems_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, base: Path
) -> None:
    data = bytearray(base.read_bytes())
    root_cell = 4096 + int.from_bytes(data[36:40], "little") + 4
    data[root_cell : root_cell + 2] = b"XX"  # root nk signature
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1
    assert out and all(line.startswith(f"{bad}: ") for line in out.splitlines())
    assert "error" in out and "not safe" in err
    code, _, err = run(capsys, "dump", str(bad))
    assert code == 1 and "cimsnap hive check" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    for argv in (["hive"], ["hive", "get", str(base)], ["hive", "merge", "a", "b"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_check_with_only_warnings_lists_them_and_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = bytearray(write_hive(Hive(root=Key("ROOT"))))
    root_cell = 4096 + int.from_bytes(data[36:40], "little") + 4
    data[root_cell + 60 : root_cell + 64] = (40).to_bytes(4, "little")  # stale max name
    untidy = tmp_path / "untidy"
    untidy.write_bytes(bytes(data))
    code, out, err = run(capsys, "check", str(untidy))
    assert (code, err) == (0, "")
    assert out.startswith(f"{untidy}: warning: nk cell")
