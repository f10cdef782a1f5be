"""Round trip: import a generated chain of three layers, read every CIM back, compare each
path with what the tars declared (the generator's model)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cimsnap.cim import CimReader, open_image
from cimsnap.devtools.layergen import GeneratedLayer, LayerModel, generate_chain
from cimsnap.wclayer.exporter import export_layer
from cimsnap.wclayer.importer import import_layer
from cimsnap.wclayer.routing import HIVES
from tests.unit.wclayer.layerkit import merged_hive

#: What the importer adds beyond the tars (base: Hives, the *_BASE links, layout; deltas:
#: the merged *_BASE hives).
SYNTHESISED = {"Hives", "layout", *(f"Hives\\{h.base}" for h in HIVES)}


def sha256_of(reader: CimReader, path: str, stream: str | None = None) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with reader.open_stream(path, stream) as data:
        for chunk in data.chunks():
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def compare(reader: CimReader, model: LayerModel) -> None:
    seen: dict[str, int] = {}
    for path, record in reader.walk():
        if not path:
            continue
        seen[path] = record.file_id
    assert set(seen) - set(model.files) <= SYNTHESISED
    assert set(model.files) <= set(seen), sorted(set(model.files) - set(seen))[:5]
    for path, want in model.files.items():
        record = reader.lookup(path)
        info = reader.info(record, path)
        got = (
            int(info.attributes),
            info.creation_time,
            info.last_access_time,
            info.last_write_time,
            info.change_time,
        )
        expected = (
            want.attributes,
            want.creation_time,
            want.last_access_time,
            want.last_write_time,
            want.change_time,
        )
        assert got == expected, path
        assert reader.security_descriptor(record) == want.security_descriptor, path
        assert reader.extended_attributes(record) == want.ea, path
        assert reader.reparse_data(record) == want.reparse, path
        if not want.is_directory:
            assert sha256_of(reader, path) == (want.size, want.sha256), path
        streams = {s.name: s for s in reader.streams(path)}
        assert set(streams) == set(want.streams), path
        for name, data in want.streams.items():
            assert reader.open_stream(path, name).read() == data, (path, name)
    groups: dict[int, set[str]] = {}
    for path, file_id in seen.items():
        if path in model.files and not model.files[path].is_directory:
            groups.setdefault(file_id, set()).add(path)
    got_groups = sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=sorted)
    assert got_groups == model.link_groups()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], list[GeneratedLayer]]:
    tmp = tmp_path_factory.mktemp("chain")
    layers = generate_chain(tmp / "tars", layers=3, seed=11, profile="small")
    root = tmp / "snapshots"
    (root / "cim-layers").mkdir(parents=True)
    sizes = []
    for layer in layers:
        parents = [str(i) for i in range(layer.index - 1, -1, -1)]
        with layer.path.open("rb") as stream:
            sizes.append(
                import_layer(
                    stream,
                    root / str(layer.index),
                    root / "cim-layers" / f"{layer.index}.cim",
                    [root / p for p in parents],
                    [root / "cim-layers" / f"{p}.cim" for p in parents],
                )
            )
    return root, sizes, list(layers)


def test_each_layer_matches_the_model(chain: tuple[Path, list[int], list[GeneratedLayer]]) -> None:
    root, sizes, layers = chain
    for layer, size in zip(layers, sizes, strict=True):
        assert size == layer.size_total
        with open_image(root / "cim-layers" / f"{layer.index}.cim") as image:
            compare(image.reader, layer.model)


def test_delta_hives_are_merged_along_the_chain(
    chain: tuple[Path, list[int], list[GeneratedLayer]],
) -> None:
    root, _, _ = chain
    config = "Files\\Windows\\System32\\config"
    with open_image(root / "cim-layers" / "0.cim") as image:
        current = {h.base: image.reader.open_stream(f"{config}\\{h.config}").read() for h in HIVES}
    for index in (1, 2):
        with open_image(root / "cim-layers" / f"{index}.cim") as image:
            r = image.reader
            deltas = {e.name.upper(): e.name for e in r.listdir("Hives")}
            for hive in HIVES:
                name = deltas[hive.delta]
                delta = r.open_stream(f"Hives\\{name}").read()
                current[hive.base] = merged_hive(current[hive.base], delta)
                merged = r.open_stream(f"Hives\\{hive.base}").read()
                assert merged == current[hive.base], (index, hive.base)
                assert (root / str(index) / "Hives" / hive.base).read_bytes() == merged


def describe(reader: CimReader) -> tuple[dict[str, tuple[object, ...]], list[frozenset[str]]]:
    """Everything a layer holds, path by path, plus its hard-link groups."""
    paths: dict[str, tuple[object, ...]] = {}
    ids: dict[int, set[str]] = {}
    for path, record in reader.walk():
        info = reader.info(record, path)
        data = None if record.is_directory else sha256_of(reader, path)
        streams = tuple(
            (s.name, reader.open_stream(path, s.name).read()) for s in reader.streams(path)
        )
        paths[path] = (
            int(info.attributes),
            info.creation_time,
            info.last_access_time,
            info.last_write_time,
            info.change_time,
            reader.security_descriptor(record),
            reader.extended_attributes(record),
            reader.reparse_data(record),
            data,
            streams,
        )
        if not record.is_directory:
            ids.setdefault(record.file_id, set()).add(path)
    groups = sorted((frozenset(g) for g in ids.values() if len(g) > 1), key=sorted)
    return paths, groups


def test_export_and_reimport_gives_the_same_layers(
    chain: tuple[Path, list[int], list[GeneratedLayer]], tmp_path: Path
) -> None:
    root, _, layers = chain
    again = tmp_path / "again"
    (again / "cim-layers").mkdir(parents=True)
    for layer in layers:
        index = layer.index
        parent = root / "cim-layers" / f"{index - 1}.cim" if index else None
        tar = tmp_path / f"exported{index}.tar"
        with tar.open("wb") as out:
            export_layer(root / "cim-layers" / f"{index}.cim", parent, out)
        parents = [str(i) for i in range(index - 1, -1, -1)]
        with tar.open("rb") as stream:
            import_layer(
                stream,
                again / str(index),
                again / "cim-layers" / f"{index}.cim",
                [again / p for p in parents],
                [again / "cim-layers" / f"{p}.cim" for p in parents],
            )
        with (
            open_image(root / "cim-layers" / f"{index}.cim") as first,
            open_image(again / "cim-layers" / f"{index}.cim") as second,
        ):
            assert describe(second.reader) == describe(first.reader), index
