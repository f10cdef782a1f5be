"""Layer stream compression: detection by magic, multi-member/multi-frame, truncation and
corruption reported with the compressed offset, both gzip backends (ISA-L and zlib)."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zlib

import pytest
import zstandard

from cimsnap.wclayer import compression
from cimsnap.wclayer.compression import detect_compression, open_compressed, open_decompressed
from cimsnap.wclayer.errors import LayerFormatError

PAYLOAD = os.urandom(300_000) + b"layer " * 400_000 + os.urandom(1000)


class Trickle(io.RawIOBase):
    """A source whose reads return at most ``step`` bytes (short reads everywhere)."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = len(self._data)
        chunk = bytes(self._data[: min(size, self._step)])
        self._data = self._data[len(chunk) :]
        return chunk


@pytest.fixture(params=["isal", "zlib"])
def gzip_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "zlib":
        monkeypatch.setattr(compression, "_isal_zlib", None)
        monkeypatch.setattr(compression, "_isal_igzip", None)
    else:
        assert compression._isal_zlib is not None
    return str(request.param)


def read_all(blob: bytes, *, threaded: bool = True, step: int | None = None) -> bytes:
    source: io.RawIOBase | io.BytesIO = Trickle(blob, step) if step else io.BytesIO(blob)
    with open_decompressed(source, threaded=threaded) as stream:
        out = bytearray()
        buf = bytearray(65536)
        while n := stream.readinto(buf):
            out += buf[:n]
        return bytes(out)


SKIPPABLE = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
FIRST_FRAME = zstandard.ZstdCompressor(write_checksum=True).compress(PAYLOAD[:1000])


def zstd_frames() -> bytes:
    second = zstandard.ZstdCompressor(level=1).compress(PAYLOAD[1000:])
    return FIRST_FRAME + SKIPPABLE + second


def test_detection_by_magic() -> None:
    assert detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert detect_compression(b"\x28\xb5\x2f") == "none"
    assert detect_compression(b"") == "none"
    assert detect_compression(b"ustar") == "none"


@pytest.mark.parametrize("threaded", [True, False])
def test_gzip_multi_member_with_zero_padding(gzip_backend: str, threaded: bool) -> None:
    blob = gzip.compress(PAYLOAD[:5]) + b"\0" * 3 + gzip.compress(PAYLOAD[5:]) + b"\0" * 700
    assert read_all(blob, threaded=threaded) == PAYLOAD


def test_gzip_short_reads(gzip_backend: str) -> None:
    blob = gzip.compress(PAYLOAD[:20_000])
    assert read_all(blob, step=3) == PAYLOAD[:20_000]


@pytest.mark.parametrize("threaded", [True, False])
def test_zstd_frames_and_skippable(threaded: bool) -> None:
    assert read_all(zstd_frames(), threaded=threaded) == PAYLOAD


def test_zstd_short_reads() -> None:
    blob = zstandard.ZstdCompressor().compress(PAYLOAD[:50_000])
    assert read_all(blob, step=2) == PAYLOAD[:50_000]


@pytest.mark.parametrize("blob", [b"", b"\x1f", b"plain tar bytes" * 100, b"\x28\xb5\x2f"])
def test_pass_through_keeps_every_byte(blob: bytes) -> None:
    assert read_all(blob) == blob
    assert read_all(blob, step=1) == blob


def test_gzip_truncation_everywhere_is_an_error(gzip_backend: str) -> None:
    blob = gzip.compress(PAYLOAD[:3000]) + gzip.compress(PAYLOAD[3000:9000])
    for cut in range(3, len(blob) - 1, 97):
        with pytest.raises(LayerFormatError) as info:
            read_all(blob[:cut], threaded=False)
        assert info.value.offset is not None and info.value.offset <= cut
    with pytest.raises(LayerFormatError) as info:
        read_all(blob[:-1])
    assert info.value.offset == len(blob) - 1
    assert "truncated" in info.value.reason


def test_zstd_truncation_everywhere_is_an_error() -> None:
    blob = zstd_frames()
    boundaries = {len(FIRST_FRAME), len(FIRST_FRAME) + len(SKIPPABLE)}
    for cut in [*range(5, 1100, 13), len(blob) - 1, len(blob) - 4]:
        if cut in boundaries:
            continue
        with pytest.raises(LayerFormatError) as info:
            read_all(blob[:cut], threaded=False)
        assert info.value.offset is not None and info.value.offset <= cut


def test_gzip_corruption_names_the_compressed_range(gzip_backend: str) -> None:
    blob = bytearray(gzip.compress(b"abc" * 100_000))
    blob[200] ^= 0x55
    with pytest.raises(LayerFormatError) as info:
        read_all(bytes(blob))
    assert info.value.offset is not None and info.value.offset <= 200
    assert "corrupt gzip" in info.value.reason


def test_gzip_trailing_garbage_is_an_error(gzip_backend: str) -> None:
    blob = gzip.compress(b"data")
    with pytest.raises(LayerFormatError) as info:
        read_all(blob + b"\0\0garbage")
    assert info.value.offset == len(blob) + 2


def test_zstd_corruption_and_garbage() -> None:
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(b"xyz" * 50_000))
    blob[-2] ^= 0xFF  # the content checksum
    with pytest.raises(LayerFormatError):
        read_all(bytes(blob))
    good = zstandard.ZstdCompressor().compress(b"xyz")
    with pytest.raises(LayerFormatError) as info:
        read_all(good + b"junk")
    assert info.value.offset == len(good)


def test_zstd_bomb_is_decoded_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    size = 64 << 20
    blob = zstandard.ZstdCompressor(level=19).compress(bytes(size))
    assert len(blob) < 10_000
    sizes: list[int] = []
    chunks = compression._unzstd(io.BytesIO(blob), b"")
    total = 0
    for chunk in chunks:
        sizes.append(len(chunk))
        total += len(chunk)
    assert total == size
    assert max(sizes) <= compression._ZSTD_BLOCKS_PER_CALL * compression._ZSTD_BLOCK_MAX


def test_gzip_bomb_is_decoded_in_bounded_chunks() -> None:
    blob = zlib.compress(bytes(64 << 20), wbits=31)
    total = 0
    for chunk in compression._gunzip(io.BytesIO(blob), b""):
        assert len(chunk) <= compression._OUT_CHUNK
        total += len(chunk)
    assert total == 64 << 20


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_open_compressed_round_trip(kind: compression.CompressionKind, gzip_backend: str) -> None:
    out = io.BytesIO()
    with open_compressed(out, kind) as sink:
        sink.write(PAYLOAD[:100_000])
        sink.write(PAYLOAD[100_000:])
    assert not out.closed
    blob = out.getvalue()
    assert detect_compression(blob[:4]) == kind or (kind == "none" and blob == PAYLOAD)
    assert read_all(blob) == PAYLOAD


def test_closing_early_stops_the_worker() -> None:
    blob = gzip.compress(bytes(50 << 20), 1)
    stream = open_decompressed(io.BytesIO(blob))
    assert stream.read(10) == bytes(10)
    stream.close()
    threads = [t for t in __import__("threading").enumerate() if t.name == "layer-decompress"]
    assert not threads


def test_without_isal_installed() -> None:
    """The ImportError path itself: a fresh interpreter where ``isal`` cannot be imported."""
    code = (
        "import sys, io, gzip; sys.modules['isal'] = None\n"
        "from cimsnap.wclayer import compression as c\n"
        "assert c._isal_zlib is None\n"
        "blob = gzip.compress(b'x' * 100000) + gzip.compress(b'y')\n"
        "assert c.open_decompressed(io.BytesIO(blob)).read() == b'x' * 100000 + b'y'\n"
        "out = io.BytesIO(); s = c.open_compressed(out, 'gzip'); s.write(b'z'); s.close()\n"
        "assert gzip.decompress(out.getvalue()) == b'z'\n"
        "try:\n"
        "    c.open_decompressed(io.BytesIO(blob[:-2])).read()\n"
        "except c.LayerFormatError:\n"
        "    print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
