"""export_layer: the tar of each layer of a generated chain, imported over its parent,
reproduces the layer; unchanged detection, whiteouts, links, refusals, determinism."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cimsnap.devtools.layergen import GeneratedLayer, LayerModel, generate_chain
from cimsnap.wclayer.exporter import ExportStats, export_layer, filetime_to_pax
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
