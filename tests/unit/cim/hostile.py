"""Shared helpers for hostile-image tests: exercise every reader path on an image."""

from __future__ import annotations

from cimsnap.cim.errors import CimApiError, CimFormatError
from cimsnap.cim.reader import CimReader
from cimsnap.cim.verify import verify_reader

#: Bytes read from each end of a stream: a sparse stream may legitimately claim 2**48 bytes,
#: which no test can read whole; its head and tail exercise every code path.
READ_LIMIT = 1 << 20


def _read(stream) -> int:
    total = len(stream.read(READ_LIMIT))
    if stream.length > 2 * READ_LIMIT:
        stream.seek(-READ_LIMIT, 2)
    return total + len(stream.read(READ_LIMIT))


def exercise(reader: CimReader) -> int:
    """Walk, stat, list and read every stream (head and tail); return bytes read. Lets
    only the reader's documented error classes escape (CimFormatError; CimApiError for
    lookups)."""
    total = 0
    for path, record in reader.walk():
        reader.info(record, path)
        if record.is_directory:
            reader.listdir(path)
        else:
            with reader.open_record_stream(record, None) as stream:
                total += _read(stream)
        for stream_info in reader.streams(path) if path else []:
            with reader.open_record_stream(record, stream_info.name) as stream:
                total += _read(stream)
    return total


def survive(views, filesystem_offset) -> str:
    """Open, exercise and verify; return 'ok', 'format' or 'api'. Any other exception
    propagates and fails the calling test."""
    try:
        reader = CimReader(views, filesystem_offset)
    except CimFormatError:
        return "format"
    verify_reader(reader)
    try:
        exercise(reader)
    except CimFormatError:
        return "format"
    except CimApiError:
        return "api"
    return "ok"
