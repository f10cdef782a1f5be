"""ORMergeHives on in-memory trees: the whole-tree merge, kept as the test oracle.

:func:`merge` applies the rules of :mod:`cimsnap.hive.rules` (with its decision
table) to two :class:`~cimsnap.hive.tree.Hive` models. It needs both hives decoded
whole, so files are merged by the incremental engine instead (:func:`merge_files`, see
:mod:`cimsnap.hive.incremental`), which calls the same rule functions; this module stays
because the property tests compare the two, and because it is the plain statement of
what a merge means.

**Sharing, not copying.** Inputs are never mutated. A base subtree that the delta does not
touch is placed in the result *by reference*, and unchanged delta values likewise, so the
result aliases parts of both inputs: treat all three as read-only (``copy.deepcopy`` the
result before editing it).

**Depth.** The walk uses an explicit stack, so any depth the reader accepts is fine.
"""

from __future__ import annotations

from typing import Final

from cimsnap.hive.incremental import MergeStats
from cimsnap.hive.mergefiles import merge_files
from cimsnap.hive.rules import OUTPUT_MINOR_VERSION, HiveMergeError, merge_subtree
from cimsnap.hive.tree import Hive, Key, LayerSemantics

__all__ = ["OUTPUT_MINOR_VERSION", "HiveMergeError", "MergeStats", "merge", "merge_files"]

_TOMBSTONE: Final = LayerSemantics.TOMBSTONE


def merge(base: Hive, delta: Hive) -> Hive:
    """Return the normal hive that ``delta`` layered over ``base`` amounts to (§4.4).

    Preconditions: ``base`` is a normal hive (no layer marks anywhere); ``delta`` may be a
    differencing hive or a normal one. The result has no layer marks, no tombstone values,
    and shares unchanged subtrees with ``base`` (see the module docstring); neither input is
    modified. Raises :class:`HiveMergeError` (an ``InvalidArgument``) when ``base`` carries
    layer marks or ``delta``'s root is a tombstone; nothing is returned then.
    """
    _require_normal(base.root)
    droot = delta.root
    if droot.semantics == _TOMBSTONE:
        raise HiveMergeError("", "the delta hive's root is a tombstone")
    root = merge_subtree(base.root, droot)
    root.name = base.root.name
    root.flags = base.root.flags
    root.access_bits = base.root.access_bits
    return Hive(
        root=root,
        minor_version=OUTPUT_MINOR_VERSION,
        flags=0,
        file_name=base.file_name,
        last_written=max(base.last_written, delta.last_written),
    )


def _require_normal(root: Key) -> None:
    """Raise :class:`HiveMergeError` if any key or value under ``root`` has a layer mark."""
    stack = [root]
    pop, extend = stack.pop, stack.extend
    while stack:
        key = pop()
        if key.semantics or key.inherit_class or any(v.tombstone for v in key.values):
            raise HiveMergeError(
                _path_of(root, key), "the base hive has layer marks; it must be a normal hive"
            )
        extend(key.subkeys.values())


def _path_of(root: Key, target: Key) -> str:
    """Return the ``\\``-joined path of ``target`` below ``root`` (for error messages)."""
    stack: list[tuple[Key, tuple[str, ...]]] = [(root, ())]
    while stack:
        key, path = stack.pop()
        if key is target:
            return "\\".join(path)
        stack.extend((child, (*path, child.name)) for child in key.subkeys.values())
    return "?"
