"""The tar stream reader on bytes: agreement with tarfile on tarfile-written archives, the Go
normalisations of the Windows layer format, and hostile streams."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.wclayer.errors import LayerFormatError, LayerStateError
from cimsnap.wclayer.tarformat import (
    USTAR_ENTRY_FAST,
    USTAR_ENTRY_FIELDS,
    USTAR_FAST,
    USTAR_HEADER,
    USTAR_NUMBER_FIELDS,
    USTAR_NUMBERS_FAST,
    parse_number,
    parse_pax,
)
from cimsnap.wclayer.tarstream import (
    TarEntry,
    TarFormatError,
    TarReader,
    TarTruncatedError,
)

# --- building archives with tarfile (the reference writer) ---------------------------------


def make_tar(
    members: Iterable[tuple[tarfile.TarInfo, bytes]],
    fmt: int = tarfile.PAX_FORMAT,
    pax_headers: dict[str, str] | None = None,
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=pax_headers) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def info(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **pax: str
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.mtime = 1_600_000_000
    ti.mode = 0o644
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def read_all(data: bytes) -> list[tuple[TarEntry, bytes]]:
    out = []
    for entry in TarReader(io.BytesIO(data)):
        out.append((entry, entry.read()))
    return out


def rechecksum(block: bytearray, at: int = 0, signed: bool = False) -> None:
    """Write a valid checksum into the header at ``at`` (tarfile computes both kinds)."""
    header = bytes(block[at : at + 512])
    unsigned_sum, signed_sum = tarfile.calc_chksums(header)
    value = signed_sum if signed else unsigned_sum
    block[at + 148 : at + 156] = b"%06o\0 " % (value & 0o777777)


def patch_field(data: bytes, at: int, field: str, value: bytes, *, signed: bool = False) -> bytes:
    """Replace one header field (by its declared name) and fix the checksum."""
    spans: dict[str, tuple[int, int]] = {}
    position = 0
    for sub in USTAR_HEADER.subcons:
        size = sub.sizeof()
        spans[sub.name] = (position, position + size)
        position += size
    start, end = spans[field]
    block = bytearray(data)
    block[at + start : at + end] = value.ljust(end - start, b"\0")
    rechecksum(block, at, signed)
    return bytes(block)


# --- agreement with tarfile ----------------------------------------------------------------

NAME_PART = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", ".."))


@st.composite
def archives(draw: st.DrawFn) -> tuple[list[tuple[tarfile.TarInfo, bytes]], int]:
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    members = []
    count = draw(st.integers(0, 8))
    for index in range(count):
        parts = draw(st.lists(NAME_PART, min_size=1, max_size=6 if fmt != 2 else 3))
        name = f"{index}/" + "/".join(parts)
        if fmt == tarfile.USTAR_FORMAT:
            name = name.encode("ascii", "ignore").decode() or f"n{index}"
            if len(name) > 99:
                name = name[:99]
        kind = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]))
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = draw(st.integers(0, 0o7777))
        ti.uid = draw(st.integers(0, 2**21 - 1))
        ti.gid = draw(st.integers(0, 2**21 - 1))
        ti.mtime = draw(st.integers(0, 2**33 - 1))
        data = b""
        if kind == tarfile.REGTYPE:
            data = draw(st.binary(max_size=3000))
            ti.size = len(data)
        elif kind == tarfile.SYMTYPE:
            target = draw(NAME_PART)
            ti.linkname = target if fmt != tarfile.USTAR_FORMAT else f"t{index}"
        if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
            keys = draw(
                st.dictionaries(
                    st.sampled_from(["MSWINDOWS.fileattr", "MSWINDOWS.rawsd", "X.unknown", "a"]),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=50),
                    max_size=3,
                )
            )
            ti.pax_headers = keys
        members.append((ti, data))
    return members, fmt


@given(archives())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_agrees_with_tarfile(case: tuple[list[tuple[tarfile.TarInfo, bytes]], int]) -> None:
    members, fmt = case
    data = make_tar(members, fmt)
    ours = read_all(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        theirs = []
        for member in tar:
            extracted = tar.extractfile(member) if member.isreg() else None
            theirs.append((member, extracted.read() if extracted else b""))
    assert len(ours) == len(theirs)
    for (entry, body), (member, their_body) in zip(ours, theirs, strict=True):
        header = entry.header
        # tarfile strips every trailing "/" of directories only; we strip one, always.
        assert header.name.rstrip("/") == member.name.rstrip("/")
        assert header.trailing_slash == (member.isdir() or member.name.endswith("/"))
        assert header.typeflag.encode() == member.type
        assert header.size == member.size
        assert body == their_body
        assert header.linkname == member.linkname
        assert header.mode == member.mode
        assert header.uid == member.uid and header.gid == member.gid
        assert header.mtime == int(member.mtime)
        if fmt == tarfile.PAX_FORMAT:
            assert dict(header.pax) == member.pax_headers


def test_large_values_agree_with_tarfile() -> None:
    """GNU base-256 numbers, long names (L/K) and an 8 GiB size field."""
    ti, _ = info("x" * 300)
    ti.uid = 2**40
    ti.gid = 7
    ti.type = tarfile.SYMTYPE
    ti.linkname = "t" * 200
    big = tarfile.TarInfo("big")
    big.size = 2**33
    gnu = make_tar([(ti, b"")], tarfile.GNU_FORMAT)
    ((entry, _),) = read_all(gnu)
    assert entry.header.name == "x" * 300
    assert entry.header.linkname == "t" * 200
    assert entry.header.uid == 2**40
    head = big.tobuf(tarfile.GNU_FORMAT)
    assert parse_number(head[124:136], "size", 0) == 2**33
    negative = bytes([0xFF] * 11 + [0xFE])
    assert parse_number(negative, "mtime", 0) == -2


# --- Go normalisations ---------------------------------------------------------------------


def test_pax_records_all_kept_and_overrides_applied() -> None:
    data = make_tar(
        [info("short", b"abc", path="Files/long/name", uid="77", **{"X.unknown": "kept"})]
    )
    ((entry, body),) = read_all(data)
    assert entry.header.name == "Files/long/name"
    assert entry.header.uid == 77
    assert entry.header.pax["X.unknown"] == "kept"
    assert body == b"abc"
    assert entry.header.offset == 0
    assert entry.header.data_offset == 1536


def test_pax_size_override_and_empty_value_keeps_ustar() -> None:
    ti, _ = info("a.txt", b"0123456789")
    raw = bytearray(make_tar([(ti, b"0123456789")], tarfile.USTAR_FORMAT))
    # An x header in front of the entry: size 4 overrides the ustar 10, empty path keeps it.
    records = b"10 size=4\n" + b"8 path=\n"
    pax_ti = tarfile.TarInfo("PaxHeaders/a.txt")
    pax_ti.type = tarfile.XHDTYPE
    pax_ti.size = len(records)
    block = pax_ti.tobuf(tarfile.USTAR_FORMAT) + records.ljust(512, b"\0")
    stream = block + bytes(raw[:512]) + b"0123".ljust(512, b"\0") + bytes(1024)
    ((entry, body),) = read_all(stream)
    assert entry.header.size == 4
    assert entry.header.name == "a.txt"
    assert body == b"0123"


def test_typeflag_nul_normalised_and_trailing_slash() -> None:
    data = make_tar([info("dir/", kind=tarfile.DIRTYPE), info("file", b"x")], tarfile.USTAR_FORMAT)
    data = patch_field(data, 0, "typeflag", b"\0")
    data = patch_field(data, 512, "typeflag", b"\0")
    (d, _), (f, body) = read_all(data)
    assert (d.header.typeflag, d.header.name, d.header.trailing_slash) == ("5", "dir", True)
    assert (f.header.typeflag, f.header.name, f.header.trailing_slash) == ("0", "file", False)
    assert body == b"x"


def test_header_only_types_have_no_data() -> None:
    """A directory whose size field says 512 is followed directly by the next header."""
    ti, _ = info("d", kind=tarfile.DIRTYPE)
    data = make_tar([(ti, b""), info("f", b"payload")], tarfile.USTAR_FORMAT)
    data = patch_field(data, 0, "size", b"%011o" % 512)
    (d, d_body), (_f, f_body) = read_all(data)
    assert d.header.size == 512 and d_body == b"" and d.remaining == 0
    assert f_body == b"payload"


def test_global_header_is_an_entry_and_not_applied() -> None:
    data = make_tar([info("a", b"1")], pax_headers={"comment": "global", "uid": "5"})
    entries = read_all(data)
    assert [e.header.typeflag for e, _ in entries] == ["g", "0"]
    assert entries[0][0].header.pax == {"comment": "global", "uid": "5"}
    assert entries[1][0].header.uid == 0
    assert "comment" not in entries[1][0].header.pax


def test_signed_checksum_accepted() -> None:
    data = make_tar([info("é", b"x")], tarfile.GNU_FORMAT)
    block = bytearray(data)
    unsigned_sum, signed_sum = tarfile.calc_chksums(bytes(block[:512]))
    assert unsigned_sum != signed_sum
    rechecksum(block, 0, signed=True)
    ((entry, _),) = read_all(bytes(block))
    assert entry.header.name == "é"


def test_end_of_archive_rules() -> None:
    one = make_tar([info("a", b"1")], tarfile.USTAR_FORMAT)
    body = one[:1024]  # header + data block, no end marker
    assert [e.header.name for e, _ in read_all(body)] == ["a"]  # EOF at a header boundary
    assert len(read_all(body + bytes(512))) == 1  # one zero block then EOF
    assert len(read_all(body + bytes(1024) + b"garbage after the end")) == 1
    with pytest.raises(TarFormatError) as info_:
        read_all(body + bytes(512) + one[:512])
    assert info_.value.offset == len(body) + 512  # the non-zero block
    with pytest.raises(TarTruncatedError):
        read_all(body + bytes(100))


def test_position_tracks_consumption() -> None:
    data = make_tar([info("a", b"1" * 700), info("b", b"2")], tarfile.USTAR_FORMAT)
    reader = TarReader(io.BytesIO(data))
    first = next(reader)
    assert reader.position == 512
    assert first.read(100) == b"1" * 100
    assert reader.position == 612
    second = next(reader)
    assert second.header.offset == 512 + 1024
    assert reader.position == 512 + 1024 + 512
    with pytest.raises(LayerStateError):
        first.read()


def test_large_file_readinto_in_chunks() -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB
    data = make_tar([info("big", payload), info("after", b"z")])
    reader = TarReader(io.BytesIO(data))
    entry = next(reader)
    buf = bytearray(1 << 20)
    collected = bytearray()
    while n := entry.readinto(buf):
        collected += buf[:n]
    assert collected == payload
    assert next(reader).read() == b"z"


# --- hostile streams -----------------------------------------------------------------------


def test_truncation_anywhere_is_an_error_or_a_boundary() -> None:
    data = make_tar([info("a", b"x" * 1000, **{"X.k": "v"}), info("b", b"y" * 10)])
    entries = read_all(data)
    starts = {entry.header.offset for entry, _ in entries}
    end_of_data = entries[-1][0].header.data_offset + 512
    accepted = 0
    for cut in [*range(0, len(data), 37), *range(0, end_of_data + 1024, 512)]:
        try:
            got = read_all(data[:cut])
        except TarTruncatedError as e:
            assert e.offset is not None and e.offset <= cut
        else:
            accepted += 1
            # Accepted: a header boundary, or at/after the end marker (nothing after it is read).
            assert (
                cut in starts
                or cut >= end_of_data + 1024
                or (cut >= end_of_data and cut % 512 == 0)
            )
            assert [e.header.name for e, _ in got] == [
                e.header.name for e, _ in entries if e.header.offset < cut
            ]
    assert accepted >= 5


def test_bad_checksum_is_a_format_error() -> None:
    data = bytearray(make_tar([info("a", b"1")], tarfile.USTAR_FORMAT))
    data[0] ^= 0x01
    with pytest.raises(TarFormatError) as info_:
        read_all(bytes(data))
    assert "checksum" in info_.value.reason and info_.value.offset == 0


def test_bad_octal_field_is_a_format_error() -> None:
    data = make_tar([info("a", b"1")], tarfile.USTAR_FORMAT)
    for bad in (b"+0000644", b"0o644", b"12 34", b"0000999"):
        with pytest.raises(TarFormatError):
            read_all(patch_field(data, 0, "mode", bad))


def test_pax_bomb_is_refused_without_reading_it() -> None:
    pax_ti = tarfile.TarInfo("PaxHeaders/x")
    pax_ti.type = tarfile.XHDTYPE
    pax_ti.size = (1 << 20) + 1
    stream = pax_ti.tobuf(tarfile.USTAR_FORMAT)  # the body itself is not even there
    with pytest.raises(TarFormatError) as info_:
        read_all(stream)
    assert "limit" in info_.value.reason


@pytest.mark.parametrize(
    "records",
    [
        b"4 a=\n",  # len < 5
        b"6 a=b\n\n",  # trailing garbage
        b"6 =bb\n",  # empty key
        b"7 abcd\n",  # no '='
        b"8 a\0b=c\n",  # NUL in key
        b"11 path=\0x\n",  # NUL in path
        b"99 a=b\n",  # length beyond the body
        b"+7 a=b\n",  # sign
        b"6 a=b",  # no newline
        b"11 path=\xff\xfe\n",  # non-UTF-8 path
    ],
)
def test_invalid_pax_records(records: bytes) -> None:
    with pytest.raises(TarFormatError):
        parse_pax(records, 0)


def test_pax_values_may_contain_newlines_and_equals() -> None:
    assert parse_pax(b"12 a=b\nc=d=\n", 0) == {"a": "b\nc=d="}
    assert parse_pax(b"6 a=1\n6 a=2\n", 0) == {"a": "2"}
    assert parse_pax(b"9 X.b=\xff\xfe\n", 0)["X.b"].encode("utf-8", "surrogateescape") == (
        b"\xff\xfe"
    )


def test_non_utf8_name_is_refused_with_offset() -> None:
    data = make_tar([info("ok", b"1"), info("bad", b"2")], tarfile.USTAR_FORMAT)
    data = patch_field(data, 1024, "name", b"caf\xe9")
    reader = TarReader(io.BytesIO(data))
    assert next(reader).header.name == "ok"
    with pytest.raises(TarFormatError) as info_:
        next(reader)
    assert info_.value.offset == 1024 and "UTF-8" in info_.value.reason


def test_ten_gigabyte_declared_size_in_a_small_file() -> None:
    ti, _ = info("huge")
    ti.size = 10 * 1024**3
    data = ti.tobuf(tarfile.PAX_FORMAT) + b"only a little data".ljust(4096, b"\0")
    tracemalloc.start()
    try:
        with pytest.raises(TarTruncatedError) as info_:
            for entry in TarReader(io.BytesIO(data)):
                entry.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info_.value.entry == "huge"
    assert peak < 16 << 20
    with pytest.raises(TarTruncatedError):  # skipping instead of reading
        list(TarReader(io.BytesIO(data + b"\0" * 10_000)))


def test_dangling_meta_header_is_truncation() -> None:
    data = make_tar([info("a" * 200, b"1")], tarfile.GNU_FORMAT)
    with pytest.raises(TarTruncatedError):
        read_all(data[:1024])  # the L header and its body, no entry


def test_zero_block_after_pax_header_is_an_error() -> None:
    data = make_tar([info("a", b"1", **{"X.k": "v"})])
    with pytest.raises(TarFormatError):
        read_all(data[:1024] + bytes(1024))


def test_pax_gnu_sparse_is_refused() -> None:
    data = make_tar([info("s", b"1", **{"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})])
    with pytest.raises(TarFormatError) as info_:
        read_all(data)
    assert "sparse" in info_.value.reason


def test_old_gnu_sparse_reported_with_extension_blocks_consumed() -> None:
    ti, _ = info("sp", b"DATA")
    ti.type = tarfile.GNUTYPE_SPARSE
    head = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    head[482] = 1  # isextended: one extension block follows
    rechecksum(head)
    extension = bytes(512)
    stream = bytes(head) + extension + b"DATA".ljust(512, b"\0") + make_tar([info("n", b"2")])
    entries = read_all(stream)
    assert [(e.header.typeflag, body) for e, body in entries] == [("S", b"DATA"), ("0", b"2")]


def test_short_reads_from_the_source() -> None:
    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            chunk, self.data = self.data[: min(size, 3)], self.data[min(size, 3) :]
            return chunk

    data = make_tar([info("a", b"hello" * 300, **{"X.k": "v"}), info("b", b"")])
    got = [(e.header.name, e.read()) for e in TarReader(Trickle(data))]
    assert got == [("a", b"hello" * 300), ("b", b"")]


def test_fast_unpacker_matches_the_declaration() -> None:
    ti, _ = info("name", b"")
    block = ti.tobuf(tarfile.USTAR_FORMAT)
    parsed = USTAR_HEADER.parse(block)
    fast = USTAR_FAST.unpack_from(block)
    names = [sub.name for sub in USTAR_HEADER.subcons]
    assert USTAR_HEADER.sizeof() == USTAR_FAST.size == 512
    assert dict(zip(names, fast, strict=True)) == {k: parsed[k] for k in names}


def test_layer_format_error_is_the_base() -> None:
    assert issubclass(TarFormatError, LayerFormatError)
    assert issubclass(TarTruncatedError, LayerFormatError)


def test_gnu_long_name_bomb_is_refused() -> None:
    long_ti = tarfile.TarInfo("././@LongLink")
    long_ti.type = tarfile.GNUTYPE_LONGNAME
    long_ti.size = 2 << 20
    with pytest.raises(TarFormatError) as info_:
        read_all(long_ti.tobuf(tarfile.GNU_FORMAT) + b"a" * 4096)
    assert "limit" in info_.value.reason


@pytest.mark.parametrize("seekable", [True, False])
def test_skipping_large_entries(tmp_path: Path, seekable: bool) -> None:
    """Skips seek on a regular file (and read elsewhere); both land on the next header and
    both notice a file cut inside the skipped data."""
    payload = bytes(range(256)) * 8192  # 2 MiB
    data = make_tar([info("big", payload), info("next", b"n"), info("big2", payload)])
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    with path.open("rb", buffering=0) as raw:
        source = raw if seekable else io.BufferedReader(Unseekable(raw))
        reader = TarReader(source)
        names = []
        for entry in reader:
            names.append(entry.header.name)
            if entry.header.name == "next":
                assert entry.read() == b"n"
        assert names == ["big", "next", "big2"]
    path.write_bytes(data[: len(data) // 2 + 1000])
    with path.open("rb", buffering=0) as raw, pytest.raises(TarTruncatedError) as info_:
        list(TarReader(raw if seekable else io.BufferedReader(Unseekable(raw))))
    assert info_.value.entry == "big2" or info_.value.entry == "big"


class Unseekable(io.RawIOBase):
    def __init__(self, raw: io.RawIOBase) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.raw.readinto(buffer) or 0


# --- the reader's fast paths agree with the strict rules -----------------------------------

_CHECKSUM_ENCODINGS = (
    lambda v: b"%06o\0 " % v,  # what tarfile and Go write (the reader's fast path)
    lambda v: b"%07o\0" % v,
    lambda v: b" %06o\0" % v,
    lambda v: b"%07o " % v,
    lambda v: b"%o" % v,
    lambda v: b"%06o  " % v,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=1, max_size=90),
    filler=st.binary(min_size=32, max_size=32),
    signed=st.booleans(),
    encoding=st.sampled_from(range(len(_CHECKSUM_ENCODINGS))),
    delta=st.sampled_from((0, 0, 0, 1, -1, 8, 0o100)),
)
def test_checksum_fast_path_agrees_with_tarfile(
    name: str, filler: bytes, signed: bool, encoding: int, delta: int
) -> None:
    """Whatever the checksum's spelling, the reader accepts exactly the blocks whose stored
    value is their unsigned or signed sum (tarfile's rule), and reads them the same."""
    block = bytearray(make_tar([info(name.rstrip("/") or "n", b"data")], tarfile.GNU_FORMAT))
    block[265:297] = filler  # uname: arbitrary bytes make the signed and unsigned sums differ
    block[148:156] = b" " * 8
    unsigned_sum, signed_sum = tarfile.calc_chksums(bytes(block[:512]))
    value = (signed_sum if signed and signed_sum >= 0 else unsigned_sum) + delta
    block[148:156] = _CHECKSUM_ENCODINGS[encoding](value).ljust(8, b"\0")[:8]
    ours: list[tuple[str, bytes]] | None
    try:
        ours = [(e.header.name, data) for e, data in read_all(bytes(block))]
    except TarFormatError as e:
        assert "checksum" in e.reason and e.offset == 0
        ours = None
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(block)), mode="r|") as tar:
            theirs: list[tuple[str, bytes]] | None = []
            for member in tar:
                extracted = tar.extractfile(member)
                assert theirs is not None and extracted is not None
                theirs.append((member.name, extracted.read()))
    except tarfile.ReadError:
        theirs = None
    assert ours == theirs
    assert (ours is not None) == (value in (unsigned_sum, signed_sum))


def test_entry_unpacker_is_a_subset_of_the_declaration() -> None:
    ti, _ = info("dir/name", b"")
    ti.linkname = "target"
    block = ti.tobuf(tarfile.USTAR_FORMAT)
    parsed = USTAR_HEADER.parse(block)
    assert USTAR_ENTRY_FAST.size == USTAR_HEADER.sizeof()
    fast = USTAR_ENTRY_FAST.unpack_from(block)
    assert dict(zip(USTAR_ENTRY_FIELDS, fast, strict=True)) == {
        k: parsed[k] for k in USTAR_ENTRY_FIELDS
    }


def test_number_unpacker_covers_the_numeric_fields() -> None:
    ti, _ = info("n", b"12345")
    ti.uid, ti.gid = 0o1234, 0o7654321
    block = ti.tobuf(tarfile.USTAR_FORMAT)
    parsed = USTAR_HEADER.parse(block)
    start = sum(sub.sizeof() for sub in USTAR_HEADER.subcons[:1])
    raw = USTAR_NUMBERS_FAST.unpack_from(block, start)
    assert dict(zip(USTAR_NUMBER_FIELDS, raw, strict=True)) == {
        k: parsed[k] for k in USTAR_NUMBER_FIELDS
    }


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.text(alphabet="01234567 \0", max_size=12), min_size=5, max_size=5))
def test_numeric_fast_path_agrees_with_the_strict_parser(fields: list[str]) -> None:
    """Octal fields with any spacing: the reader's one-pass parse accepts and computes
    exactly what parse_number does field by field (or both refuse)."""
    widths = [8, 8, 8, 12, 12]
    data = make_tar([info("n", b"")], tarfile.USTAR_FORMAT)
    names = ["mode", "uid", "gid", "size", "mtime"]
    raws = [f.encode()[:w].ljust(w, b"\0") for f, w in zip(fields, widths, strict=True)]
    for name, raw in zip(names, raws, strict=True):
        data = patch_field(data, 0, name, raw)
    expected: list[int] | None
    try:
        expected = [parse_number(raw, name, 0) for name, raw in zip(names, raws, strict=True)]
    except TarFormatError:
        expected = None
    try:
        entries = TarReader(io.BytesIO(data + bytes(1024)))
        header = next(iter(entries)).header
        got: list[int] | None = [header.mode, header.uid, header.gid, header.size, header.mtime]
    except TarFormatError:
        got = None
    assert got == expected
