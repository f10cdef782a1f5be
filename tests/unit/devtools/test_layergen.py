"""The layer generator: determinism, its model against a tarfile reading of its tars, the
tar conventions of the Windows layer format, its hives and its OCI image archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cimsnap.devtools import layergen
from cimsnap.devtools.layergen import (
    BASE_HIVES,
    DELTA_HIVES,
    SECURITY_DESCRIPTORS,
    GeneratedLayer,
    LayerModel,
    generate_chain,
    write_oci_image,
)
from cimsnap.hive import check_hive, merge, read_current_build, read_hive
from tests.unit.devtools.tarreplay import model_differences, pax_filetime, replay


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedLayer]:
    return generate_chain(tmp_path_factory.mktemp("chain"), layers=3, seed=7)


def _replayed(layers: list[GeneratedLayer]) -> list[tuple[LayerModel, list[str]]]:
    model = LayerModel()
    out = []
    for layer in layers:
        opener = gzip.open if layer.compressed else open
        with opener(layer.path, "rb") as f:
            model, names = replay(f, model)  # type: ignore[arg-type]
        out.append((model, names))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate_chain(tmp_path / "a", layers=2, seed=3, compress=True)
    b = generate_chain(tmp_path / "b", layers=2, seed=3, compress=True)
    c = generate_chain(tmp_path / "c", layers=2, seed=4, compress=True)
    for x, y, z in zip(a, b, c, strict=True):
        assert x.path.read_bytes() == y.path.read_bytes()
        assert x.diff_id == y.diff_id and x.digest == y.digest
        assert x.diff_id != z.diff_id
        assert "sha256:" + hashlib.sha256(x.path.read_bytes()).hexdigest() == x.digest
        assert "sha256:" + hashlib.sha256(gzip.decompress(x.path.read_bytes())).hexdigest() == (
            x.diff_id
        )


def test_model_matches_what_tarfile_reads_back(chain: list[GeneratedLayer]) -> None:
    for layer, (model, _) in zip(chain, _replayed(chain), strict=True):
        assert model_differences(layer.model, model) == [], layer.path


def test_chain_covers_every_feature(chain: list[GeneratedLayer]) -> None:
    final = chain[-1].model.files
    assert any(f.reparse[:4] == struct.pack("<I", 0xA000000C) for f in final.values())
    junctions = [f for f in final.values() if f.reparse[:4] == struct.pack("<I", 0xA0000003)]
    assert junctions and all(f.attributes == 0x410 for f in junctions)
    assert any(f.streams for f in final.values())
    assert any(b"" in f.streams.values() for f in final.values())  # an empty stream
    assert any(f.ea for f in final.values())
    assert any(f.attributes & 0x200 and f.size >= 256 * 1024 for f in final.values())
    assert any(f.size == 0 and not f.is_directory for f in final.values())
    assert any(
        f.security_descriptor == layergen.NULL_DACL_SECURITY_DESCRIPTOR for f in final.values()
    )
    assert any(not p.isascii() for p in final)
    assert any(ord(c) > 0xFFFF for p in final for c in p)
    assert max(p.count("\\") for p in final) > 40
    assert max(len(p) for p in final) > 1600
    assert all(len(group) >= 2 for group in chain[0].model.link_groups())
    assert chain[0].model.link_groups() and chain[-1].model.link_groups()
    # The deltas delete what the layers below had, and re-add nothing they deleted.
    for below, above in itertools.pairwise(chain):
        assert below.model.files.keys() - above.model.files.keys()
    # Every attribute is already masked to what a CIM stores.
    assert all(f.attributes & ~layergen.STORED_ATTRIBUTES == 0 for f in final.values())


def test_tar_conventions(chain: list[GeneratedLayer]) -> None:
    for layer, (_, names) in zip(chain, _replayed(chain), strict=True):
        listing = subprocess.run(
            ["tar", "--warning=no-unknown-keyword", "-tf", str(layer.path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        assert listing == names  # GNU tar agrees, and no name has a trailing slash
        assert not any(n.endswith("/") for n in listing)
        seen: set[str] = set()
        with tarfile.open(layer.path) as tar:
            members = tar.getmembers()
        last_file = None
        forms = set()
        for m in members:
            parent = m.name.rpartition("/")[0]
            assert not parent or parent.partition(":")[0] in seen or ":" in m.name, m.name
            if m.islnk():
                assert m.linkname in seen or m.linkname.replace("/", "\\") in (
                    chain[layer.index - 1].model.files if layer.index else {}
                ), m.name
                assert not m.pax_headers or set(m.pax_headers) <= {"path", "linkpath"}
            if ":" in m.name.rpartition("/")[2]:
                assert last_file is not None and m.name.startswith(last_file + ":"), m.name
                forms.add(m.name.endswith(":$DATA"))
            else:
                last_file = m.name if m.isreg() else None
            if (
                not m.islnk()
                and not m.name.rpartition("/")[2].startswith(".wh.")
                and ":" not in m.name
            ):
                pax = m.pax_headers
                assert {
                    "MSWINDOWS.fileattr",
                    "LIBARCHIVE.creationtime",
                    "mtime",
                    "atime",
                    "ctime",
                } <= set(pax)
                assert m.uid == m.gid == 0 and m.uname == m.gname == ""
            seen.add(m.name)
        if layer.index:
            assert forms == {True, False}  # both ADS name forms
            assert any(m.name.rpartition("/")[2].startswith(".wh.") for m in members)
        else:
            assert not any(m.name.rpartition("/")[2].startswith(".wh.") for m in members)


def test_times_have_100ns_precision(chain: list[GeneratedLayer]) -> None:
    with tarfile.open(chain[0].path) as tar:
        times = [m.pax_headers["mtime"] for m in tar.getmembers() if "mtime" in m.pax_headers]
    assert any(len(t.partition(".")[2]) == 7 for t in times)
    for t in times:
        assert layergen.filetime_to_pax(pax_filetime(t)) == t


def test_hives_are_real_and_deltas_apply(chain: list[GeneratedLayer]) -> None:
    base = chain[0].model.files
    hives = {}
    for kind in BASE_HIVES:
        data = base[f"Files\\Windows\\System32\\config\\{kind}"].data
        assert data is not None
        assert check_hive(data) == []
        hives[kind] = read_hive(data)
        assert not hives[kind].is_differencing
    assert (
        read_current_build(base["Files\\Windows\\System32\\config\\SOFTWARE"].data or b"") == 20348
    )
    for layer in chain[1:]:
        for kind in BASE_HIVES:
            data = layer.model.files[f"Hives\\{DELTA_HIVES[kind]}"].data
            assert data is not None and check_hive(data) == []
            delta = read_hive(data)
            assert delta.is_differencing
            merged = merge(hives[kind], delta)
            assert merged != hives[kind]
            hives[kind] = merged


def test_security_descriptor_pool() -> None:
    for sd in [*SECURITY_DESCRIPTORS[0], *SECURITY_DESCRIPTORS[1]]:
        assert 100 <= len(sd) <= 250
        revision, _, control, owner, group, sacl, dacl = struct.unpack_from("<BBHIIII", sd)
        assert revision == 1 and control & 0x8004 == 0x8004 and sacl == 0
        acl_size = struct.unpack_from("<H", sd, dacl + 2)[0]
        assert dacl + acl_size == len(sd) and 20 <= owner < group < dacl


def test_encoders_known_vectors() -> None:
    # Relative symlink "a": NT name = print name = "a", flags 1 (RELATIVE).
    buf = layergen.reparse_buffer("a", mountpoint=False)
    assert buf == bytes.fromhex("0c0000a0140000000000020004000200010000006100000061000000")
    junction = layergen.reparse_buffer("C:\\x", mountpoint=True)
    nt, target = "\\??\\C:\\x".encode("utf-16-le"), "C:\\x".encode("utf-16-le")
    assert junction[:4] == bytes.fromhex("030000a0")
    assert junction[8:16] == struct.pack("<HHHH", 0, len(nt), len(nt) + 2, len(target))
    assert junction[16:] == nt + b"\0\0" + target + b"\0\0"
    ea = layergen.ea_buffer({"B": b"\x01", "A": b""})
    assert (
        ea
        == struct.pack("<IBBH", 12, 0, 1, 0)
        + b"A\0\0\0"
        + struct.pack("<IBBH", 0, 0, 1, 1)
        + b"B\0\x01\0"
    )


def test_bench_profile_shape(tmp_path: Path) -> None:
    size, entries = 24 << 20, 3000
    (layer,) = generate_chain(
        tmp_path, layers=1, seed=1, profile="bench", size=size, entries=entries, compress=True
    )
    with gzip.open(layer.path) as f:
        model, _names = replay(f, LayerModel())  # type: ignore[arg-type]
    assert model_differences(layer.model, model) == []
    assert all(f.data is None for f in layer.model.files.values() if f.size)
    with tarfile.open(layer.path) as tar:
        members = tar.getmembers()
    n = len(members)
    assert 0.9 * entries <= n <= 1.1 * entries
    links = sum(m.islnk() for m in members) / n
    dirs = sum(m.isdir() for m in members) / n
    assert 0.25 <= links <= 0.40 and 0.07 <= dirs <= 0.12
    data = sum(m.size for m in members if m.isreg() and "config/" not in m.name)
    assert 0.85 * size <= data <= 1.15 * size
    assert not any(":" in m.name.rpartition("/")[2] or m.issym() for m in members)
    ratio = layer.blob_size / layer.tar_size
    assert 0.2 < ratio < 0.9  # compressible, but not trivially


def test_oci_image_archive_parses_back(chain: list[GeneratedLayer], tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    digest = write_oci_image(out, chain[:2], ref="docker.io/library/cimsnap-test:v1")
    assert list(tmp_path.iterdir()) == [out]  # temporary blobs are gone
    with tarfile.open(out) as tar:
        blobs = {}
        for m in tar.getmembers():
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                blobs[m.name] = f.read()
    assert json.loads(blobs["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in blobs.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rpartition("/")[2]
    index = json.loads(blobs["index.json"])
    (desc,) = index["manifests"]
    assert desc["digest"] == digest
    assert desc["platform"] == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.20348.1",
    }
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/library/cimsnap-test:v1"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads(blobs[f"blobs/sha256/{digest[7:]}"])
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert (
        len(blobs[f"blobs/sha256/{manifest['config']['digest'][7:]}"]) == manifest["config"]["size"]
    )
    config = json.loads(blobs[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["os"] == "windows" and config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in chain[:2]]
    for desc, layer in zip(manifest["layers"], chain[:2], strict=True):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        blob = blobs[f"blobs/sha256/{desc['digest'][7:]}"]
        assert len(blob) == desc["size"]
        assert gzip.decompress(blob) == layer.path.read_bytes()


def test_cli_writes_chain_and_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cimsnap.devtools.layergen",
            str(out),
            "--size",
            "2MiB",
            "--entries",
            "400",
            "--layers",
            "2",
            "--gzip",
            "--oci-image",
            str(tmp_path / "img.tar"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(out / "layer0.tar.gz"))
    assert (tmp_path / "img.tar").stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "cimsnap.devtools.layergen", str(out), "--size", "lots"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "size" in bad.stderr
    shutil.rmtree(out)


def test_parse_size() -> None:
    assert layergen.parse_size("1GiB") == 1 << 30
    assert layergen.parse_size("300MB") == 300 << 20
    assert layergen.parse_size("512k") == 512 << 10
    assert layergen.parse_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        layergen.parse_size("1 GiB please")


def test_models_of_earlier_layers_are_not_changed_by_later_ones(tmp_path: Path) -> None:
    layers = generate_chain(tmp_path, layers=2, seed=5)
    with open(layers[0].path, "rb") as f:
        alone, _ = replay(io.BufferedReader(f), LayerModel())  # type: ignore[arg-type]
    assert model_differences(layers[0].model, alone) == []


def test_output_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    digests = []
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cimsnap.devtools.layergen",
                str(tmp_path / hash_seed),
                "--profile",
                "small",
                "--layers",
                "2",
                "--seed",
                "9",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        digests.append([line.split("\t")[-1] for line in result.stdout.splitlines()])
    assert digests[0] == digests[1]
