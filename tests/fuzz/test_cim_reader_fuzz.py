"""Mutation fuzzing of the CIM reader: random byte flips and truncations of a valid image
raise only CimFormatError (or a lookup's CimApiError), in bounded time (§1, §13)."""

from __future__ import annotations

import contextlib
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.headers import parse_image_header
from cimsnap.cim.reader import CimReader
from tests.unit.cim.hostile import survive
from tests.unit.cim.test_reader import sample

BUILT = sample().build()
FILESYSTEM = BUILT.offsets["filesystem"]
UPCASE_START = BUILT.locate("upcase")[1]
UPCASE_END = UPCASE_START + fmt.UPCASE_TABLE_SIZE
META = bytes(BUILT.regions[0])
OTHER = [bytes(r) for r in BUILT.regions[1:]]

# Flips land mostly in the metadata objects (not the 128 KiB upcase table).
positions = st.one_of(
    st.integers(0, UPCASE_START - 1),
    st.integers(UPCASE_END, len(META) - 1),
    st.integers(UPCASE_START, UPCASE_END - 1),
)
flips = st.lists(st.tuples(positions, st.integers(1, 255)), min_size=1, max_size=8)

# Profile-level options (derandomize in CI, deadline, health checks) come from
# tests/conftest.py; only the budget is set here.
FUZZ = settings(max_examples=150)


def run(meta: bytes, others=OTHER) -> str:
    views = [memoryview(meta), *(memoryview(o) for o in others)]
    return survive(views, FILESYSTEM)


@pytest.mark.timeout(120)
@FUZZ
@given(flips)
def test_byte_flips_of_metadata(changes):
    meta = bytearray(META)
    for position, xor in changes:
        meta[position] ^= xor
    run(bytes(meta))


@pytest.mark.timeout(120)
@FUZZ
@given(st.integers(0, len(META)), st.integers(0, 2), st.integers(0, 20_000))
def test_truncations(meta_cut, region, other_cut):
    others = list(OTHER)
    others[region % len(others)] = others[region % len(others)][:other_cut]
    run(META[:meta_cut], others)


@pytest.mark.timeout(60)
@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(BUILT.cim) - 1), st.integers(1, 255)), max_size=6))
def test_image_header_flips(changes):
    data = bytearray(BUILT.cim)
    for position, xor in changes:
        data[position] ^= xor
    with contextlib.suppress(CimFormatError):
        parse_image_header(bytes(data))


def _writer_image() -> tuple[list[bytes], int]:
    """Regions and Filesystem offset of a small image written by cimsnap.cim.writer."""
    import tempfile
    from pathlib import Path

    from cimsnap.cim.file_metadata import FileMetadata
    from cimsnap.cim.regions import open_image
    from cimsnap.cim.writer import CimWriter

    with tempfile.TemporaryDirectory() as directory:
        with CimWriter(Path(directory), "w.cim") as w:
            w.create_file("d", FileMetadata(attributes=int(fmt.FileAttribute.DIRECTORY)))
            for name, data in [("d\\a", b"x" * 5000), ("d\\B", b"small"), ("e", b"")]:
                with w.create_file(name, FileMetadata(size=len(data))) as stream:
                    stream.write(data)
            with w.create_alternate_stream("d\\a:s", 3) as stream:
                stream.write(b"ads")
            w.create_hard_link("h", "d\\B")
            w.commit()
        with open_image(Path(directory) / "w.cim") as image:
            regions = [bytes(p.read_bytes()) for p in image.region_paths]
            return regions, image.header.filesystem_offset


@functools.cache
def writer_image() -> tuple[list[bytes], int, list[int]]:
    """(regions, Filesystem offset, metadata positions outside the upcase table), built
    once on first use so a broken writer fails only the test that needs it."""
    regions, filesystem = _writer_image()
    reader = CimReader([memoryview(r) for r in regions], filesystem)
    upcase = reader.upcase_table_offset & ((1 << 48) - 1)
    metadata = [
        *range(upcase),
        *range(upcase + fmt.UPCASE_TABLE_SIZE, len(regions[0])),
    ]
    return regions, filesystem, metadata


@pytest.mark.timeout(120)
@settings(max_examples=100)
@given(st.data())
def test_byte_flips_of_writer_output(data):
    original, filesystem, metadata = writer_image()
    regions = [bytearray(r) for r in original]
    for _ in range(data.draw(st.integers(1, 6))):
        index = data.draw(st.sampled_from([0, 0, 0, 1, 2]))
        if index == 0:
            position = data.draw(st.sampled_from(metadata))
        else:
            position = data.draw(st.integers(0, len(regions[index]) - 1))
        regions[index][position] ^= data.draw(st.integers(1, 255))
    survive([memoryview(bytes(r)) for r in regions], filesystem)
