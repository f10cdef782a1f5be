"""``cimsnap cim ...`` through the real CLI (cli.main in-process, and one subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cimsnap.cli import main
from tests.unit.cim.test_reader import sample


@pytest.fixture
def image(tmp_path):
    return sample().build().write(tmp_path, "layer.cim")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_text_and_json(capsys, image):
    code, out, _ = run(capsys, "cim", "ls", str(image))
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()][:2] == ["big.bin", "dir\\"]
    code, out, _ = run(capsys, "cim", "ls", str(image), "dir", "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "path": "dir\\file.txt",
            "file_id": 3,
            "type": "file",
            "size": 5,
            "attributes": 0,
            "sparse": False,
            "reparse_tag": 0,
            "creation_time": "1601-01-01T00:00:00Z",
            "last_write_time": "1601-01-01T00:00:00Z",
            "change_time": "1601-01-01T00:00:00Z",
            "last_access_time": "1601-01-01T00:00:00Z",
        }
    ]


def test_stat_json_lists_streams(capsys, image):
    code, out, _ = run(capsys, "cim", "stat", str(image), "dir/file.txt", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["streams"] == [
        {"name": "ads", "size": 9, "sparse": False},
        {"name": "zero", "size": 0, "sparse": False},
    ]
    code, out, _ = run(capsys, "cim", "stat", str(image), "link")
    assert code == 0 and "0xa000000c" in out


def test_cat_default_and_alternate_stream(capfdbinary, image):
    assert main(["cim", "cat", str(image), "dir\\file.txt"]) == 0
    assert capfdbinary.readouterr().out == b"hello"
    assert main(["cim", "cat", str(image), "dir/file.txt:ads"]) == 0
    assert capfdbinary.readouterr().out == b"alternate"


def test_tree_and_verify(capsys, image):
    code, out, _ = run(capsys, "cim", "tree", str(image), "--json")
    assert code == 0
    paths = [item["path"] for item in json.loads(out)]
    assert "Other\\hardlink.txt" in paths and paths[0] == ""
    code, out, _ = run(capsys, "cim", "verify", str(image), "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "problems": []}


def test_errors_exit_1_and_say_what_next(capsys, image, tmp_path):
    code, _, err = run(capsys, "cim", "cat", str(image), "dir/nope")
    assert code == 1 and "cimsnap cim ls" in err
    code, _, err = run(capsys, "cim", "ls", str(tmp_path / "missing.cim"))
    assert code == 1 and "missing.cim" in err
    region = next(tmp_path.glob("region_*_0"))
    data = bytearray(region.read_bytes())
    data[0] ^= 0xFF
    region.write_bytes(data)
    code, _, err = run(capsys, "cim", "verify", str(image))
    assert code == 1
    code, _, err = run(capsys, "cim", "ls", str(image))
    assert code == 1 and "cimsnap cim verify" in err and region.name in err


def test_verify_reports_errors_with_exit_1(capsys, tmp_path):
    from tests.unit.cim.imagebuilder import ImageBuilder

    b = ImageBuilder()
    b.add_file(1, "a", b"")
    b.add_file(1, "A", b"")
    cim = b.build().write(tmp_path)
    code, out, _ = run(capsys, "cim", "verify", str(cim), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert problems[0]["severity"] == "error" and problems[0]["region"] == 0
    assert isinstance(problems[0]["offset"], int)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["cim", "ls"])
    assert info.value.code == 2


def test_build_then_inspect_via_subprocess(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"from build")
    os.mkfifo(src / "fifo")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cim = out_dir / "built.cim"
    cli = [sys.executable, "-m", "cimsnap"]
    built = subprocess.run([*cli, "cim", "build", str(src), str(cim)], capture_output=True)
    assert built.returncode == 1  # the FIFO is a problem, reported on stderr
    assert b"fifo" in built.stderr
    cat = subprocess.run([*cli, "cim", "cat", str(cim), "sub/a.txt"], capture_output=True)
    assert (cat.returncode, cat.stdout) == (0, b"from build")
    verify = subprocess.run([*cli, "cim", "verify", str(cim)], capture_output=True)
    assert verify.returncode == 0, verify.stdout


def test_build_clean_tree_exits_0_and_fork(capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    child = tmp_path / "child"
    child.mkdir()
    (child / "g").write_bytes(b"2")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["cim", "build", str(src), str(out / "base.cim")]) == 0
    args = ["cim", "build", str(child), str(out / "fork.cim"), "--parent", str(out / "base.cim")]
    assert main(args) == 0
    capsys.readouterr()
    code, out_text, _ = run(capsys, "cim", "ls", str(out / "fork.cim"), "--json")
    assert code == 0 and [e["path"] for e in json.loads(out_text)] == ["f", "g"]


def test_ls_is_lenient_about_bad_entries(capsys, tmp_path):
    import struct

    from tests.unit.cim.imagebuilder import ImageBuilder

    b = ImageBuilder()
    b.add_file(1, "good", b"1")
    b.add_file(1, "worse", b"2")
    built = b.build()
    region, offset = built.locate("dir:1")
    struct.pack_into("<I", built.regions[region], offset + 12, 4242)  # "worse" -> bad ID
    cim = built.write(tmp_path)
    code, out, err = run(capsys, "cim", "ls", str(cim))
    assert code == 1
    assert out.split()[-1] == "good" and "worse" in err and "skipped" in err


def test_build_refuses_existing_output(capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    assert main(["cim", "build", str(src), str(tmp_path / "a.cim")]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "cim", "build", str(src), str(tmp_path / "a.cim"))
    assert code == 1 and "choose another name" in err
