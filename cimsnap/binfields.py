"""Leaf fields of a fixed-size ``construct`` declaration, for deriving fast packers.

``cimsnap.cim`` and ``cimsnap.hive`` each declare their on-disk structures once with
construct and derive ``struct.Struct`` fast paths from those declarations. The derivation
itself lives here, once, so the two formats' fast paths follow the same rules and cannot
drift apart; each package wraps the leaves in its own small record type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import construct as cs

__all__ = ["Leaf", "leaves"]


@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf field of a declaration.

    ``name`` is dotted for nested structs (``default_stream.data_offset``). ``code`` is the
    little-endian ``struct`` code, or None for a fixed-size leaf with no struct equivalent
    (an adapter). ``const`` holds the expected bytes of a ``Const`` leaf; a fast path reads
    them as plain bytes, so its caller must check them itself.
    """

    name: str
    size: int
    code: str | None
    const: bytes | None = None


def leaves(con: Any, prefix: str = "") -> list[Leaf]:
    """Return the leaves of ``con`` in order.

    Understands nested ``Struct``s, little-endian integers (``FormatField``), fixed
    ``Bytes`` and ``Const`` over fixed bytes. Any other fixed-size leaf gets ``code`` None.
    Raises TypeError for an unnamed struct field or a leaf whose size is not fixed.
    """
    name = prefix or "value"
    while isinstance(con, cs.Renamed):
        con = con.subcon
    if isinstance(con, cs.Struct):
        found: list[Leaf] = []
        for sub in con.subcons:
            if sub.name is None:
                raise TypeError(f"{name}: unnamed field")
            found += leaves(sub, f"{prefix}.{sub.name}" if prefix else sub.name)
        return found
    if isinstance(con, cs.FormatField) and con.fmtstr[0] == "<":
        return [Leaf(name, con.sizeof(), con.fmtstr[1:])]
    if isinstance(con, cs.Bytes) and isinstance(con.length, int):
        return [Leaf(name, con.length, f"{con.length}s")]
    if isinstance(con, cs.Const) and isinstance(con.value, bytes):
        value: bytes = con.value
        return [Leaf(name, len(value), f"{len(value)}s", value)]
    try:
        size = con.sizeof()
    except cs.SizeofError as e:
        raise TypeError(f"{name}: {type(con).__name__} has no fixed size") from e
    return [Leaf(name, size, None)]
