"""Mutation fuzzing of the layer stream readers: the tar reader, the PAX parser and the
decompressors either succeed or raise LayerFormatError, and stay bounded in time and memory
whatever sizes the mutated headers declare."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.wclayer.compression import open_decompressed
from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.tarformat import parse_pax
from cimsnap.wclayer.tarstream import TarReader
from cimsnap.wclayer.winmeta import basic_info, ea_buffer, security_descriptor


def _seed(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data, pax in (
            ("Files", b"", {"MSWINDOWS.fileattr": "16"}),
            ("Files/" + "long" * 40 + ".dll", b"MZ" * 300, {"mtime": "1600000000.1234567"}),
            ("Files/é.txt", b"hello", {"MSWINDOWS.xattr.A": "AQI=", "X.unknown": "v"}),
        ):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if not data else tarfile.REGTYPE
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data) if data else None)
        link = tarfile.TarInfo("Files/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "target/" * 30
        tar.addfile(link)
    return out.getvalue()


SEEDS = tuple(_seed(fmt) for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT))


@st.composite
def mutated_tars(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if len(buf) < 1024:
            break
        kind = draw(st.sampled_from(["byte", "size", "digit", "cut", "chksum"]))
        header = draw(st.integers(0, 8)) * 512
        if kind == "byte":
            pos = draw(st.integers(0, len(buf) - 1))
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "size":  # a plausible or absurd size field, octal or base-256
            value = draw(st.sampled_from([b"77777777777", b"\x80" + bytes(7) + b"\x7f" * 4]))
            buf[header + 124 : header + 136] = value.ljust(12, b"\0")[:12]
        elif kind == "digit":  # inside a PAX body: break a length or a record
            pos = draw(st.integers(512, min(len(buf) - 1, 4096)))
            buf[pos] = draw(st.sampled_from(b"0123456789 =\n\0"))
        elif kind == "cut":
            del buf[draw(st.integers(0, len(buf))) :]
        if draw(st.booleans()) and header + 512 <= len(buf):
            block = bytes(buf[header : header + 512])
            total, _ = tarfile.calc_chksums(block)  # type: ignore[attr-defined]
            buf[header + 148 : header + 156] = b"%06o\0 " % (total & 0o777777)
    return bytes(buf)


@pytest.mark.timeout(300)
@given(mutated_tars())
@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_tars(data: bytes) -> None:
    tracemalloc.start()
    try:
        try:
            for entry in TarReader(io.BytesIO(data)):
                header = entry.header
                assert header.offset <= header.data_offset <= len(data)
                while entry.read(65536):
                    pass
                try:
                    basic_info(header)
                    security_descriptor(header.pax)
                    ea_buffer(header.pax)
                except LayerFormatError:
                    pass
        except LayerFormatError as e:
            assert e.reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=1000)
def test_pax_parser_on_random_bytes(body: bytes) -> None:
    try:
        records = parse_pax(body, 0)
    except LayerFormatError:
        return
    for key, value in records.items():
        assert key and "=" not in key and "\0" not in key
        if key in ("path", "linkpath"):
            assert "\0" not in value


COMPRESSED = (
    gzip.compress(SEEDS[0]) + gzip.compress(SEEDS[1]),
    zstandard.ZstdCompressor(write_checksum=True).compress(SEEDS[0]),
)


@pytest.mark.timeout(300)
@given(st.sampled_from(COMPRESSED), st.data())
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_compressed_streams(blob: bytes, data: st.DataObject) -> None:
    buf = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        if data.draw(st.booleans()):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        else:
            del buf[data.draw(st.integers(0, len(buf))) :]
            if not buf:
                return
    try:
        with open_decompressed(io.BytesIO(bytes(buf)), threaded=data.draw(st.booleans())) as s:
            while s.read(65536):
                pass
    except LayerFormatError as e:
        assert e.offset is not None
