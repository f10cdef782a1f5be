"""Export, then re-import with import_layer: each layer of a generated chain, imported by
the real importer (hive routing and merges included), exported over its parent and
imported again over the same parent, gives a CIM with the same content."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cimsnap.cim import read_image_header
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.hive import read_hive
from cimsnap.wclayer.exporter import export_layer
from cimsnap.wclayer.importer import import_layer
from tests.unit.devtools.tarreplay import model_differences
from tests.unit.wclayer.cimreplay import read_cim_model

HIVE_BASES = ("SYSTEM_BASE", "SOFTWARE_BASE", "SAM_BASE", "SECURITY_BASE", "DEFAULTUSER_BASE")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedLayer]]:
    tmp = tmp_path_factory.mktemp("rt")
    layers = generate_chain(tmp / "tars", layers=3, seed=23)
    root = tmp / "snapshots"
    (root / "cim-layers").mkdir(parents=True)
    for layer in layers:
        parents = [root / f"L{i}" for i in range(layer.index - 1, -1, -1)]
        with layer.path.open("rb") as f:
            import_layer(
                f,
                root / f"L{layer.index}",
                root / "cim-layers" / f"L{layer.index}.cim",
                parents,
                [root / "cim-layers" / f"{p.name}.cim" for p in parents],
            )
    return root, layers


def _export(root: Path, index: int) -> bytes:
    out = io.BytesIO()
    parent = root / "cim-layers" / f"L{index - 1}.cim" if index else None
    export_layer(root / "cim-layers" / f"L{index}.cim", parent, out)
    return out.getvalue()


def test_reimport_of_each_exported_layer_gives_the_same_cim(
    imported: tuple[Path, list[GeneratedLayer]],
) -> None:
    root, layers = imported
    for layer in layers:
        data = _export(root, layer.index)
        parents = [root / f"L{i}" for i in range(layer.index - 1, -1, -1)]
        again = root / "cim-layers" / f"R{layer.index}.cim"
        size = import_layer(
            io.BytesIO(data),
            root / f"R{layer.index}",
            again,
            parents,
            [root / "cim-layers" / f"{p.name}.cim" for p in parents],
        )
        assert size > 0
        original = read_cim_model(root / "cim-layers" / f"L{layer.index}.cim")
        assert model_differences(original, read_cim_model(again)) == [], layer.index
        # Exporting the re-imported layer gives the same tar, byte for byte.
        out = io.BytesIO()
        parent = root / "cim-layers" / f"L{layer.index - 1}.cim" if layer.index else None
        export_layer(again, parent, out)
        assert out.getvalue() == data


def test_hives_travel_as_windows_layers_carry_them(
    imported: tuple[Path, list[GeneratedLayer]],
) -> None:
    root, layers = imported
    base = _export(root, 0)
    with tarfile.open(fileobj=io.BytesIO(base)) as tar:
        names = tar.getnames()
    assert not any(n == "Hives" or n.startswith("Hives/") or n == "layout" for n in names)
    for hive in ("SYSTEM", "SOFTWARE", "SAM", "SECURITY", "DEFAULT"):
        assert f"Files/Windows/System32/config/{hive}" in names
    for layer in layers[1:]:
        with tarfile.open(fileobj=io.BytesIO(_export(root, layer.index))) as tar:
            members = {m.name: m for m in tar.getmembers()}
            deltas = sorted(n for n in members if n.startswith("Hives/"))
            assert deltas == sorted(
                f"Hives/{n}"
                for n in (
                    "System_Delta",
                    "Software_Delta",
                    "Sam_Delta",
                    "Security_Delta",
                    "DefaultUser_Delta",
                )
            )
            delta = tar.extractfile(members["Hives/Software_Delta"])
            assert delta is not None and read_hive(delta.read()).is_differencing
        assert not any(n.upper().endswith(b) for n in members for b in HIVE_BASES)


def test_export_of_a_base_layer_alone_matches_the_generated_tar_model(
    imported: tuple[Path, list[GeneratedLayer]], tmp_path: Path
) -> None:
    root, layers = imported
    (tmp_path / "cim-layers").mkdir()
    with io.BytesIO(_export(root, 0)) as data:
        import_layer(data, tmp_path / "B", tmp_path / "cim-layers" / "B.cim", [], [])
    model = read_cim_model(tmp_path / "cim-layers" / "B.cim")
    assert model_differences(read_cim_model(root / "cim-layers" / "L0.cim"), model) == []
    assert all(p in model.files for p in layers[0].model.files)


def _image_bytes(cim: Path) -> tuple[bytes, dict[str, bytes]]:
    """The .cim and its own region and objectid files, with the region-set GUID masked."""
    own = read_image_header(cim).region_sets[-1]
    text = str(own.guid)
    files = {
        p.name.replace(text, "GUID"): p.read_bytes() for p in cim.parent.iterdir() if text in p.name
    }
    return cim.read_bytes().replace(own.guid.bytes_le, b"G" * 16), files


def test_a_reimported_layer_is_byte_identical_but_for_its_region_guid(
    imported: tuple[Path, list[GeneratedLayer]],
) -> None:
    root, _ = imported
    data = _export(root, 2)
    images = []
    for name in ("X", "Y"):
        parents = [root / "L1", root / "L0"]
        cim = root / "cim-layers" / f"{name}.cim"
        import_layer(
            io.BytesIO(data),
            root / name,
            cim,
            parents,
            [root / "cim-layers" / f"{p.name}.cim" for p in parents],
        )
        images.append(_image_bytes(cim))
    assert images[0] == images[1]
    assert len(images[0][1]) == 6  # three regions, three objectid files
