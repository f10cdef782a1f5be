"""Hypothesis strategies for normal (non-differencing) hives used by the hive I/O tests.

Names mix ASCII, Latin-1 (stored compressed), other BMP characters and an astral
character (stored as a surrogate pair). Value data is well-formed for its type so that
independent readers (hivex, regipy) that decode by type can be compared with us; sizes
include the inline (<= 4), single-cell and db (> 16,344 bytes) boundaries.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_DWORD_BIG_ENDIAN,
    REG_EXPAND_SZ,
    REG_LINK,
    REG_MULTI_SZ,
    REG_NONE,
    REG_QWORD,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
    name_key,
)
from cimsnap.hive.writer import DEFAULT_SECURITY_DESCRIPTOR

NAME_ALPHABET = "abcXYZ019 _-.{}$äÖßÿµ" + "Ωжσς中☃ǅı" + "😀"
SECURITY = (b"", DEFAULT_SECURITY_DESCRIPTOR, DEFAULT_SECURITY_DESCRIPTOR[:-1] + b"\x13")
BIG_SIZES = (0, 1, 4, 5, 16343, 16344, 16345, 16349, 32689, 40000)

names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=12)
texts = st.text(alphabet=NAME_ALPHABET, min_size=0, max_size=20)


def utf16z(text: str) -> bytes:
    """``text`` as UTF-16LE with a terminating NUL (REG_SZ form)."""
    return (text + "\0").encode("utf-16-le", "surrogatepass")


@st.composite
def value_data(draw: st.DrawFn) -> tuple[int, bytes]:
    """A (type, data) pair, well-formed for its type."""
    kind = draw(
        st.sampled_from(
            ["sz", "expand", "multi", "dword", "be", "qword", "bin", "none", "link", "big", "odd"]
        )
    )
    if kind in ("sz", "expand"):
        return (REG_SZ if kind == "sz" else REG_EXPAND_SZ), utf16z(draw(texts))
    if kind == "multi":
        parts = draw(st.lists(names, max_size=4))
        return REG_MULTI_SZ, "".join(p + "\0" for p in [*parts, ""]).encode("utf-16-le")
    if kind in ("dword", "be"):
        return (REG_DWORD if kind == "dword" else REG_DWORD_BIG_ENDIAN), draw(
            st.binary(min_size=4, max_size=4)
        )
    if kind == "qword":
        return REG_QWORD, draw(st.binary(min_size=8, max_size=8))
    if kind == "big":
        size = draw(st.sampled_from(BIG_SIZES))
        seed = draw(st.integers(0, 255))
        return REG_BINARY, bytes((seed + i * 7) & 0xFF for i in range(size))
    if kind == "odd":
        return draw(st.integers(8, 0xFFFF)), draw(st.binary(max_size=40))
    data = draw(st.binary(max_size=40))
    return {"bin": REG_BINARY, "none": REG_NONE, "link": REG_LINK}[kind], data


@st.composite
def value_lists(draw: st.DrawFn, layered: bool = False) -> list[Value]:
    out: list[Value] = []
    seen: set[str] = set()
    for name in draw(st.lists(st.one_of(st.just(""), names), max_size=4)):
        if name_key(name) in seen:
            continue
        seen.add(name_key(name))
        if layered and draw(st.integers(0, 3)) == 0:
            out.append(Value(name, REG_NONE, b"", tombstone=True))
            continue
        vtype, data = draw(value_data())
        out.append(Value(name, vtype, data))
    return out


@st.composite
def keys(draw: st.DrawFn, depth: int = 3, layered: bool = False) -> Key:
    """A key subtree; with ``layered``, random layer semantics, InheritClass and tombstone
    values (any combination: the writer stores marks, it does not judge them)."""
    key = Key(
        draw(names),
        last_written=draw(st.integers(0, 2**64 - 1)),
        flags=draw(st.sampled_from([0, 0x8, 0x10])),
        class_name=draw(st.one_of(st.none(), names)),
        security=draw(st.sampled_from(SECURITY)),
        access_bits=draw(st.sampled_from([0, 2, 0xFF])),
        values=draw(value_lists(layered)),
    )
    if layered:
        key.semantics = draw(st.sampled_from(list(LayerSemantics)))
        key.inherit_class = draw(st.booleans())
    if depth > 0:
        for child in draw(st.lists(keys(depth=depth - 1, layered=layered), max_size=4)):
            if key.subkey(child.name) is None:
                key.add_subkey(child)
    return key


@st.composite
def hives(draw: st.DrawFn, layered: bool = False) -> Hive:
    """A hive of up to ~85 keys: normal, or with ``layered`` a differencing hive."""
    return Hive(
        draw(keys(layered=layered)),
        minor_version=draw(st.sampled_from([5, 6])),
        flags=2 if layered else 0,
        file_name=draw(st.sampled_from(["", r"\??\C:\Windows\System32\config\SOFTWARE"])),
        last_written=draw(st.integers(0, 2**64 - 1)),
    )
