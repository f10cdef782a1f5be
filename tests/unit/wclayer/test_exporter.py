"""export_layer: the tar of each layer of a generated chain, imported over its parent,
reproduces the layer; unchanged detection, whiteouts, links, refusals, determinism."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cimsnap.cim import read_image_header
from cimsnap.devtools.layergen import GeneratedLayer, LayerModel, generate_chain
from cimsnap.wclayer.errors import LayerCancelledError, LayerFormatError, LayerParentError
from cimsnap.wclayer.exporter import (
    ExportStats,
    export_layer,
    filetime_from_unix_ns,
    filetime_to_pax,
)
from cimsnap.wclayer.tarstream import TarReader
from cimsnap.wclayer.winmeta import basic_info
from tests.unit.devtools.tarreplay import model_differences, pax_filetime, replay
from tests.unit.wclayer.cimreplay import import_plain, read_cim_model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedLayer]]:
    """A generated three-layer chain imported (without hive routing) as layer{N}.cim."""
    root = tmp_path_factory.mktemp("export")
    layers = generate_chain(root / "tars", layers=3, seed=11)
    cims = root / "cims"
    cims.mkdir()
    for layer in layers:
        parent = f"layer{layer.index - 1}.cim" if layer.index else None
        with layer.path.open("rb") as f:
            import_plain(f, cims, f"layer{layer.index}.cim", parent)
    return cims, layers


def _export(cims: Path, index: int) -> tuple[bytes, ExportStats]:
    out = io.BytesIO()
    parent = cims / f"layer{index - 1}.cim" if index else None
    stats = export_layer(cims / f"layer{index}.cim", parent, out)
    return out.getvalue(), stats


def test_plain_import_holds_what_the_generator_declared(
    built: tuple[Path, list[GeneratedLayer]],
) -> None:
    cims, layers = built
    for layer in layers:
        assert (
            model_differences(layer.model, read_cim_model(cims / f"layer{layer.index}.cim")) == []
        )


def test_export_replayed_over_parent_gives_the_layer(
    built: tuple[Path, list[GeneratedLayer]],
) -> None:
    cims, layers = built
    below = LayerModel()
    for layer in layers:
        data, stats = _export(cims, layer.index)
        assert stats.tar_bytes == len(data)
        model, _ = replay(io.BytesIO(data), below)
        assert model_differences(layer.model, model) == [], layer.index
        below = layer.model


def test_export_reimported_gives_an_identical_cim(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    cims, layers = built
    for layer in layers:
        data, _ = _export(cims, layer.index)
        work = tmp_path / f"re{layer.index}"
        work.mkdir()
        parent = None
        if layer.index:
            for f in cims.iterdir():
                (work / f.name).symlink_to(f)
            (work / f"layer{layer.index}.cim").unlink()
            parent = f"layer{layer.index - 1}.cim"
        again = import_plain(io.BytesIO(data), work, "again.cim", parent, seed=1)
        original = read_cim_model(cims / f"layer{layer.index}.cim")
        assert model_differences(original, read_cim_model(again)) == []


def test_export_is_deterministic_and_a_delta_is_small(
    built: tuple[Path, list[GeneratedLayer]],
) -> None:
    cims, layers = built
    for layer in layers:
        assert _export(cims, layer.index)[0] == _export(cims, layer.index)[0]
    delta, stats = _export(cims, 1)
    with tarfile.open(fileobj=io.BytesIO(delta)) as tar:
        names = tar.getnames()
    # Only what layer 1 changed: its whiteouts, new and changed entries, not the base.
    assert stats.whiteouts == sum(n.rpartition("/")[2].startswith(".wh.") for n in names) > 0
    assert len(names) < len(layers[1].model.files)
    unchanged = [p for p, f in layers[1].model.files.items() if layers[0].model.files.get(p) is f]
    assert unchanged and not set(n.replace("/", "\\") for n in names) & set(unchanged)


def test_filetime_pax_form() -> None:
    for ft in (
        0,
        1,
        116_444_736_000_000_000,
        116_444_736_000_000_001,
        116_444_735_999_999_999,
        132_500_000_123_456_700,
        (1 << 63) - 1,
    ):
        text = filetime_to_pax(ft)
        assert not text.endswith("0") or "." not in text
        secs, _, frac = text.lstrip("-").partition(".")
        ticks = int(secs) * 10_000_000 + int((frac + "0000000")[:7])
        assert (116_444_736_000_000_000 + (-ticks if text.startswith("-") else ticks)) == ft
    assert filetime_to_pax(116_444_736_000_000_000) == "0"
    assert filetime_to_pax(0) == "-11644473600"
    assert filetime_to_pax(116_444_735_999_999_999) == "-0.0000001"
    assert pax_filetime(filetime_to_pax(132_500_000_123_456_700)) == 132_500_000_123_456_700


def test_export_does_not_depend_on_the_hash_seed(built: tuple[Path, list[GeneratedLayer]]) -> None:
    cims, _ = built
    script = (
        "import sys; from cimsnap.wclayer.exporter import export_layer; "
        "export_layer(sys.argv[1], sys.argv[2], sys.stdout.buffer)"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script, str(cims / "layer2.cim"), str(cims / "layer1.cim")],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1] == _export(cims, 2)[0]


def test_export_to_a_file_or_a_pipe_is_the_same_bytes(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    """A plain binary file or pipe gets the data through the kernel (sendfile); the bytes
    are those written to any other stream."""
    cims, _ = built
    expected = _export(cims, 1)[0]
    with (tmp_path / "out.tar").open("wb") as f:
        f.write(b"prefix")
        export_layer(cims / "layer1.cim", cims / "layer0.cim", f)
        f.write(b"suffix")
    assert (tmp_path / "out.tar").read_bytes() == b"prefix" + expected + b"suffix"
    script = (
        "import sys; from cimsnap.wclayer.exporter import export_layer; "
        "sys.stdout.buffer.write(b'>'); "
        "export_layer(sys.argv[1], sys.argv[2], sys.stdout.buffer)"
    )
    piped = subprocess.run(
        [sys.executable, "-c", script, str(cims / "layer1.cim"), str(cims / "layer0.cim")],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    assert piped == b">" + expected


def test_progress_and_cancellation(built: tuple[Path, list[GeneratedLayer]]) -> None:
    cims, _ = built
    seen: list[tuple[int, int]] = []
    stats = export_layer(
        cims / "layer0.cim", None, io.BytesIO(), progress=lambda b, n: seen.append((b, n))
    )
    assert len(seen) == stats.entries - stats.streams
    assert seen == sorted(seen) and seen[-1][1] == stats.entries
    stop = threading.Event()

    def cancel_after_ten(_: int, entries: int) -> None:
        if entries >= 10:
            stop.set()

    with pytest.raises(LayerCancelledError, match="cancelled"):
        export_layer(
            cims / "layer0.cim", None, io.BytesIO(), progress=cancel_after_ten, cancelled=stop
        )


def test_only_the_immediate_parent_is_accepted(built: tuple[Path, list[GeneratedLayer]]) -> None:
    """Over an older ancestor the tar would carry only this layer's hive deltas."""
    cims, _ = built
    with pytest.raises(LayerParentError, match="immediate parent"):
        export_layer(cims / "layer2.cim", cims / "layer0.cim", io.BytesIO())
    with pytest.raises(LayerParentError, match="not a fork"):
        export_layer(cims / "layer1.cim", cims / "layer2.cim", io.BytesIO())


def test_export_appended_to_a_file(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    """O_APPEND files cannot take sendfile data: the export copies instead, same bytes."""
    cims, _ = built
    target = tmp_path / "out.tar"
    target.write_bytes(b"head")
    with target.open("ab") as f:
        export_layer(cims / "layer0.cim", None, f)
    assert target.read_bytes() == b"head" + _export(cims, 0)[0]


def test_damaged_layer_cim_is_a_format_error_naming_it(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    cims, _ = built
    for f in cims.iterdir():
        shutil.copy(f, tmp_path / f.name)
    header = read_image_header(tmp_path / "layer0.cim")
    regions = sorted(tmp_path.glob(f"region_{header.region_sets[-1].guid}_*"))
    data = max(regions, key=lambda p: p.stat().st_size)  # the data region
    with data.open("r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(LayerFormatError, match=r"layer0\.cim"):
        export_layer(tmp_path / "layer0.cim", None, io.BytesIO())


def test_sendfile_refused_by_the_kernel_falls_back_to_copying(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault we cannot provoke on this filesystem: sendfile answering EINVAL."""
    cims, _ = built
    calls: list[int] = []

    def refuse(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuse)
    with (tmp_path / "out.tar").open("wb") as f:
        export_layer(cims / "layer1.cim", cims / "layer0.cim", f)
    assert len(calls) == 1  # refused once, then copied for the rest of the export
    assert (tmp_path / "out.tar").read_bytes() == _export(cims, 1)[0]


def _entry_times(
    data: bytes,
) -> list[tuple[str, int, tuple[int, int, int, int] | None, dict[str, str]]]:
    """(name, ustar mtime, (creation, access, write, change) FILETIMEs or None, other PAX)."""
    out = []
    for entry in TarReader(io.BytesIO(data)):
        h = entry.header
        timed = "mtime" in h.pax
        times = None
        if timed:
            info = basic_info(h)
            times = (
                info.creation_time,
                info.last_access_time,
                info.last_write_time,
                info.change_time,
            )
        other = {k: v for k, v in h.pax.items() if k not in _TIME_KEYS}
        out.append((h.name, h.mtime, times, other))
    return out


_TIME_KEYS = {"mtime", "atime", "ctime", "LIBARCHIVE.creationtime"}


def test_source_date_epoch_clamps_later_times_only(
    built: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    cims, _ = built
    plain = _entry_times(_export(cims, 1)[0])
    every = sorted({t for _, _, times, _ in plain if times for t in times})
    assert len(every) > 10
    epoch = every[len(every) // 2] + 1  # between two times the layer uses
    out = io.BytesIO()
    export_layer(cims / "layer1.cim", cims / "layer0.cim", out, source_date_epoch=epoch)
    clamped = _entry_times(out.getvalue())
    assert [e[0] for e in clamped] == [e[0] for e in plain]
    kept = lowered = 0
    for (name, _, before, other), (_, ustar, after, other_after) in zip(
        plain, clamped, strict=True
    ):
        assert other_after == other, name  # only times change
        if before is None:
            assert after is None and ustar == 0, name
            continue
        assert after == tuple(min(t, epoch) for t in before), name
        assert ustar == max(0, (after[2] - filetime_from_unix_ns(0)) // 10_000_000), name
        kept += sum(t < epoch for t in before)
        lowered += sum(t > epoch for t in before)
    assert kept and lowered  # both sides of the epoch were exercised
    # Re-imported over the parent, the layer differs from the original only in its times.
    work = tmp_path / "re"
    work.mkdir()
    (work / "layer0.cim").symlink_to(cims / "layer0.cim")
    for f in cims.iterdir():
        if f.suffix != ".cim":
            (work / f.name).symlink_to(f)
    again = read_cim_model(import_plain(io.BytesIO(out.getvalue()), work, "a.cim", "layer0.cim"))
    original = read_cim_model(cims / "layer1.cim")
    assert set(again.files) == set(original.files)
    exported = {name.replace("/", "\\") for name, _, times, _ in plain if times}
    for entry in TarReader(io.BytesIO(out.getvalue())):  # hard links share their target's times
        if entry.header.typeflag == "1" and entry.header.linkname.replace("/", "\\") in exported:
            exported.add(entry.header.name.replace("/", "\\"))
    assert exported & set(original.files)
    for path, want in original.files.items():
        got = again.files[path]
        bound = epoch if path in exported else None  # the rest came from the parent as is
        for field in ("creation_time", "last_access_time", "last_write_time", "change_time"):
            value = getattr(want, field)
            assert getattr(got, field) == (value if bound is None else min(value, bound)), path
        assert replace(got, **_times_of(want)) == want, path


def _times_of(model_file: Any) -> dict[str, int]:
    return {
        f: getattr(model_file, f)
        for f in ("creation_time", "last_access_time", "last_write_time", "change_time")
    }


def test_unix_ns_to_filetime() -> None:
    assert filetime_from_unix_ns(0) == 116444736000000000
    assert filetime_from_unix_ns(1_700_000_000_123_456_789) == 116444736000000000 + (
        17_000_000_001_234_567
    )
    assert filetime_to_pax(filetime_from_unix_ns(-150)) == "-0.0000002"
