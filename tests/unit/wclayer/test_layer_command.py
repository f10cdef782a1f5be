"""``cimsnap layer import/export/destroy`` on real generated layers, real files and a real
SIGINT; failures leave nothing behind."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from cimsnap.cli import main
from cimsnap.commands.layer import compression_for
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.wclayer.compression import detect_compression
from cimsnap.wclayer.exporter import filetime_from_unix_ns
from cimsnap.wclayer.layer_files import cim_path_for_layer
from tests.unit.wclayer.layerkit import pax_times, snapshot


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedLayer]:
    """A small generated base + delta chain: the base gzip, the delta re-compressed zstd."""
    out = tmp_path_factory.mktemp("layers")
    layers = generate_chain(out, layers=2, profile="small", compress=True, seed=5)
    delta = layers[1].path
    plain = gzip.decompress(delta.read_bytes())
    zst = delta.with_name("layer1.tar.zst")
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain))
    layers[1] = dataclasses.replace(layers[1], path=zst)
    return layers


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def tree(cim: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    code, out, _ = run(["cim", "tree", str(cim), "--json"], capsys)
    assert code == 0
    items: list[dict[str, object]] = json.loads(out)
    return items


def import_chain(
    root: Path, chain: list[GeneratedLayer], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["layer", "import", str(chain[0].path), "--layer-dir", str(root / "l0")], capsys
    )
    assert (code, err) == (0, "")  # not a terminal: no progress output
    assert str(root / "cim-layers" / "l0.cim") in out
    code, out, err = run(
        [
            "layer",
            "import",
            str(chain[1].path),
            "--layer-dir",
            str(root / "l1"),
            "--parent",
            str(root / "l0"),
        ],
        capsys,
    )
    assert (code, err) == (0, ""), err
    assert f"imported {chain[1].size_total} bytes" in out


def test_cim_path_and_compression_rules(tmp_path: Path) -> None:
    assert (
        cim_path_for_layer(tmp_path / "snapshots" / "7") == tmp_path / "snapshots/cim-layers/7.cim"
    )
    assert compression_for("a.tar.gz") == compression_for("a.TGZ") == "gzip"
    assert compression_for("a.tar.zst") == compression_for("a.zstd") == "zstd"
    assert compression_for("a.tar") == "none"


def test_import_export_reimport(
    tmp_path: Path, chain: list[GeneratedLayer], capsys: pytest.CaptureFixture[str]
) -> None:
    import_chain(tmp_path, chain, capsys)
    cims = tmp_path / "cim-layers"
    exported = tmp_path / "out" / "l1.tar.zst"
    exported.parent.mkdir()
    code, _, err = run(
        [
            "layer",
            "export",
            str(cims / "l1.cim"),
            "--parent",
            str(cims / "l0.cim"),
            "-o",
            str(exported),
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    assert detect_compression(exported.read_bytes()[:4]) == "zstd"
    assert sorted(p.name for p in exported.parent.iterdir()) == ["l1.tar.zst"]  # no partials
    code, _, err = run(
        [
            "layer",
            "import",
            str(exported),
            "--layer-dir",
            str(tmp_path / "l1b"),
            "--parent",
            str(tmp_path / "l0"),
        ],
        capsys,
    )
    assert code == 0, err
    assert tree(cims / "l1b.cim", capsys) == tree(cims / "l1.cim", capsys)

    plain = tmp_path / "out" / "l0.tar"
    code, _, _ = run(["layer", "export", str(cims / "l0.cim"), "-o", str(plain)], capsys)
    assert code == 0
    assert detect_compression(plain.read_bytes()[:4]) == "none"
    code, _, err = run(["layer", "export", str(cims / "l0.cim"), "-o", str(plain)], capsys)
    assert code == 1 and "exists already" in err


def test_failures_leave_nothing(
    tmp_path: Path, chain: list[GeneratedLayer], capsys: pytest.CaptureFixture[str]
) -> None:
    import_chain(tmp_path, chain, capsys)
    before = snapshot(tmp_path)
    truncated = tmp_path.parent / f"{tmp_path.name}-truncated.tar.gz"
    blob = chain[1].path.read_bytes()
    plain = zstandard.ZstdDecompressor().decompress(blob)
    truncated.write_bytes(gzip.compress(plain)[: len(blob) // 2])
    cases = [
        (
            [
                "layer",
                "import",
                str(truncated),
                "--layer-dir",
                str(tmp_path / "bad"),
                "--parent",
                str(tmp_path / "l0"),
            ],
            "gzip stream truncated",
        ),
        (
            ["layer", "import", str(chain[1].path), "--layer-dir", str(tmp_path / "bad")],
            "not a valid Windows layer",
        ),
        (
            [
                "layer",
                "import",
                str(chain[1].path),
                "--layer-dir",
                str(tmp_path / "bad"),
                "--parent",
                str(tmp_path / "nope"),
            ],
            "import it first",
        ),
        (
            ["layer", "import", str(chain[0].path), "--layer-dir", str(tmp_path / "l0")],
            "layer destroy",
        ),
        (
            [
                "layer",
                "import",
                str(tmp_path / "missing.tar"),
                "--layer-dir",
                str(tmp_path / "bad"),
            ],
            "give the layer tar",
        ),
        (
            [
                "layer",
                "export",
                str(tmp_path / "cim-layers" / "nope.cim"),
                "-o",
                str(tmp_path / "x.tar"),
            ],
            "no such file",
        ),
    ]
    for argv, hint in cases:
        code, out, err = run(argv, capsys)
        assert code == 1, argv
        assert hint in err and out == ""
        assert snapshot(tmp_path) == before, argv
    with pytest.raises(SystemExit) as usage:
        main(["layer", "import", str(chain[0].path)])  # --layer-dir missing
    assert usage.value.code == 2


def test_destroy(
    tmp_path: Path, chain: list[GeneratedLayer], capsys: pytest.CaptureFixture[str]
) -> None:
    import_chain(tmp_path, chain, capsys)
    cims = tmp_path / "cim-layers"
    regions_before = {p.name for p in cims.iterdir()}
    code, out, _ = run(["layer", "destroy", str(tmp_path / "l1")], capsys)
    assert code == 0 and "destroyed" in out
    left = {p.name for p in cims.iterdir()}
    assert "l1.cim" not in left and "l0.cim" in left
    assert left < regions_before  # l1's own region files went too
    assert (tmp_path / "l1").is_dir()
    code, _, _ = run(["cim", "verify", str(cims / "l0.cim")], capsys)
    assert code == 0
    code, _, err = run(["layer", "destroy", str(tmp_path / "l1")], capsys)
    assert code == 0 and "nothing to destroy" in err


def test_stdin_and_sigint_cancel(tmp_path: Path, chain: list[GeneratedLayer]) -> None:
    """A real SIGINT while the import waits for more of its stdin: exit 130, nothing kept."""
    plain = gzip.decompress(chain[0].path.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cimsnap",
            "layer",
            "import",
            "-",
            "--layer-dir",
            str(tmp_path / "l0"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdin is not None
    child.stdin.write(plain[: len(plain) // 3])
    child.stdin.flush()
    time.sleep(2.0)  # the child has started, installed its handler and read what it got
    child.send_signal(signal.SIGINT)
    time.sleep(0.5)
    try:
        child.stdin.write(plain[len(plain) // 3 :])
        child.stdin.close()
    except BrokenPipeError:
        pass
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert not (tmp_path / "cim-layers" / "l0.cim").exists()
    assert not (tmp_path / "l0").exists()
    assert [p.name for p in (tmp_path / "cim-layers").iterdir()] == []


def test_stdin_import(tmp_path: Path, chain: list[GeneratedLayer]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cimsnap",
            "layer",
            "import",
            "-",
            "--layer-dir",
            str(tmp_path / "l0"),
        ],
        input=chain[0].path.read_bytes(),
        capture_output=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert (tmp_path / "cim-layers" / "l0.cim").is_file()
    assert io.BytesIO(result.stdout).read().endswith(b"bytes of file data\n")


def test_progress_on_a_terminal(tmp_path: Path, chain: list[GeneratedLayer]) -> None:
    """stderr on a pseudo-terminal gets the progress line (MB, MB/s, entries)."""
    import pty

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    master, slave = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cimsnap",
                "layer",
                "import",
                str(chain[0].path),
                "--layer-dir",
                str(tmp_path / "l0"),
            ],
            stderr=slave,
            stdout=subprocess.PIPE,
            env=env,
            check=False,
        )
        os.close(slave)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                shown += chunk
    finally:
        os.close(master)
    assert result.returncode == 0
    last = shown.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert f"{chain[0].entries:,} entries" in last and "MB/s" in last


def test_export_source_date_epoch_flag_and_environment(
    tmp_path: Path,
    chain: list[GeneratedLayer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import_chain(tmp_path, chain, capsys)
    cim = str(tmp_path / "cim-layers" / "l0.cim")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)

    def export(name: str, *extra: str) -> tuple[int, bytes, str]:
        out = tmp_path / name
        code, _, err = run(["layer", "export", cim, "-o", str(out), *extra], capsys)
        return code, out.read_bytes() if out.exists() else b"", err

    code, plain, _ = export("plain.tar")
    assert code == 0
    unix = sorted((t - filetime_from_unix_ns(0)) // 10_000_000 for t in pax_times(plain))
    seconds = unix[len(unix) // 2]
    epoch = filetime_from_unix_ns(seconds * 1_000_000_000)
    code, flagged, _ = export("flag.tar", "--source-date-epoch", str(seconds))
    assert code == 0
    times = pax_times(flagged)
    assert max(times) == epoch and max(pax_times(plain)) > epoch
    assert [min(t, epoch) for t in pax_times(plain)] == times
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(seconds))
    assert export("env.tar")[:2] == (0, flagged)
    # The flag wins over the environment.
    assert export("both.tar", "--source-date-epoch", str(unix[-1] + 1))[:2] == (0, plain)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    code, written, err = export("bad.tar")
    assert (code, written) == (2, b"") and "SOURCE_DATE_EPOCH" in err
    code, written, err = export("old.tar", "--source-date-epoch", str(-11_644_473_601))
    assert (code, written) == (2, b"") and "before 1601" in err
