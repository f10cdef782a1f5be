"""Fuzz target: a layer stream read as the importer reads it.

Input: the bytes of a (possibly compressed) layer tar. They go through
``open_decompressed`` (gzip, zstd or plain, detected by magic), ``TarReader``, and for each
entry the Windows metadata decoders (``basic_info``, ``file_attributes``,
``security_descriptor``, ``ea_buffer``, and ``reparse_buffer`` for symlinks). The only
error allowed is LayerFormatError (its subclasses TarFormatError, TarTruncatedError
included), with a reason; anything else escaping is a crash. What succeeds must be
consistent: header offsets lie inside what was consumed, an entry yields exactly its
declared size (no data for header-only types, whatever they declare), and decoding the
same header twice gives the same result.
"""

from __future__ import annotations

import io

from cimsnap.wclayer.compression import open_decompressed
from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.tarformat import HEADER_ONLY_TYPES
from cimsnap.wclayer.tarstream import TarHeader, TarReader
from cimsnap.wclayer.winmeta import (
    basic_info,
    ea_buffer,
    file_attributes,
    reparse_buffer,
    security_descriptor,
)

_CHUNK = 1 << 16


def _decode(header: TarHeader) -> tuple[object, ...]:
    reparse = None
    if header.typeflag == "2":
        reparse = reparse_buffer(header.linkname, mountpoint="MSWINDOWS.mountpoint" in header.pax)
    return (
        basic_info(header),
        file_attributes(header),
        security_descriptor(header.pax),
        ea_buffer(header.pax),
        reparse,
    )


def test_one_input(data: bytes) -> None:
    try:
        stream = open_decompressed(io.BytesIO(data), threaded=False)
        try:
            reader = TarReader(stream)
            last_end = 0
            for entry in reader:
                header = entry.header
                assert last_end <= header.offset <= header.data_offset, header
                # Header-only types (links, directories, devices, FIFOs) carry no data
                # whatever size they declare, as in Go's archive/tar.
                data_size = 0 if header.typeflag in HEADER_ONLY_TYPES else header.size
                assert header.size >= 0 and entry.remaining == data_size
                got = 0
                while chunk := entry.read(_CHUNK):
                    got += len(chunk)
                assert got == data_size and entry.remaining == 0
                last_end = header.data_offset + data_size
                assert reader.position >= last_end
                try:
                    first = _decode(header)
                except LayerFormatError as e:
                    assert str(e)
                else:
                    assert _decode(header) == first
        finally:
            stream.close()
    except LayerFormatError as e:
        assert e.reason, e
