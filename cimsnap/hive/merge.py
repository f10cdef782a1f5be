"""ORMergeHives in pure Python: a normal hive plus a differencing hive gives a normal hive.

Implements windows-layer-import.md §4.4 on the in-memory model of :mod:`cimsnap.hive.tree`.
For one key path, with ``b`` the base node (or none) and ``d`` the delta node (or none):

1. no ``d``: ``b``'s subtree is kept as it is (shared by reference, see below);
2. ``d`` is a tombstone (1): the key and its subtree are dropped, whatever ``b`` is;
3. no ``b``: ``d``'s subtree is emitted with layer marks cleared, tombstone subkeys and
   tombstone values dropped; InheritClass has nothing to inherit, so the class is empty;
4. ``d`` is SupersedeTree (3): as rule 3, except that InheritClass on ``d`` itself takes
   ``b``'s class (``b``'s values and subkeys are discarded);
5. ``d`` is SupersedeLocal (2): ``d``'s values only, minus tombstones; class per
   InheritClass; subkeys are the union of both sides, each merged by these rules;
6. ``d`` is merge (0): ``b``'s values with ``d``'s applied (a tombstone removes the
   same-named value, any other value replaces or adds); class per InheritClass; subkeys
   merged as in rule 5;
7. the properties of merged keys: see the decision table below;
8. a tombstone with no counterpart has no effect, and a descendant of a SupersedeTree node
   is handled as in rule 3 whatever its own semantics (only tombstones are honoured there).

Names match case-insensitively with Windows' per-code-unit upcase (:func:`name_key`).

**Decisions where offreg's choice is unknown** (§4.4 rule 7, §7 question 1). This table is
the one place they are made; ``tests/unit/hive/test_merge_decisions.py`` pins each row.

=====================  =====================================================================
question               choice
=====================  =====================================================================
key timestamp          ``max(b, d)`` when both exist, else the one that exists
security descriptor    ``d``'s when ``d`` exists and has one, else ``b``'s
key flags, access bits ``d``'s when ``d`` exists, else ``b``'s; the root keeps ``b``'s
key name casing        ``b``'s when ``b`` exists (the root keeps ``b``'s name), else ``d``'s
value name casing      ``b``'s when a ``d`` value replaces a ``b`` value (type, data: ``d``'s)
value order            ``b``'s order with replacements in place; new values appended in ``d``
                       order (so merging the same delta twice changes nothing)
duplicate names        a value list naming a value twice (invalid; Windows cannot create
                       it): the first one counts, in ``d`` and in ``b``, as a lookup by name
                       finds the first; ``b``'s later duplicates are dropped when ``d``
                       changes that key's values, kept when it does not
InheritClass, new key  no class (nothing to inherit from; rule 3)
InheritClass below 3   a descendant of a SupersedeTree node never inherits (the lower
                       subtree is hidden), so its class is empty, as for a new key
output hive version    minor version 6 (offreg-saved samples are v1.6)
output hive flags      0 (a normal hive: no layered-keys bit, no KTM lock)
output file name       ``base.file_name``
output timestamp       ``max(base.last_written, delta.last_written)`` (no clock is read)
delta root tombstone   refused (:class:`HiveMergeError`): a hive cannot lose its root
delta not flagged 0x2  accepted; its keys are read as they are (a normal hive's marks are 0,
                       so it acts as a plain overlay: rule 6 everywhere)
base with layer marks  refused (:class:`HiveMergeError`): ``B`` must be a normal hive
=====================  =====================================================================

**Sharing, not copying.** Inputs are never mutated. A base subtree that the delta does not
touch is placed in the result *by reference*, and unchanged delta values likewise, so the
result aliases parts of both inputs: treat all three as read-only (``copy.deepcopy`` the
result before editing it). This keeps a merge of a 500k-key base with a small delta cheap.

**Depth.** The walk uses an explicit stack, so any depth the reader accepts is fine.

**Files.** :func:`merge_files` is the file edge: it reads both hives, merges, and publishes
the output atomically (temporary file, fsync, no-clobber link, directory fsync). Like
``ORSaveHive``, it refuses an output path that already exists.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Final

from cimsnap.errdefs import AlreadyExists, InvalidArgument, NotFound
from cimsnap.hive.errors import HiveFormatError
from cimsnap.hive.gcpause import gc_paused
from cimsnap.hive.reader import read_hive
from cimsnap.hive.tree import Hive, Key, LayerSemantics, Value, name_key
from cimsnap.hive.writer import write_hive_to

__all__ = ["OUTPUT_MINOR_VERSION", "HiveMergeError", "merge", "merge_files"]

#: Minor version of every merged hive (see the decision table).
OUTPUT_MINOR_VERSION: Final = 6

_TOMBSTONE: Final = LayerSemantics.TOMBSTONE
_SUPERSEDE_LOCAL: Final = LayerSemantics.SUPERSEDE_LOCAL
_SUPERSEDE_TREE: Final = LayerSemantics.SUPERSEDE_TREE
_MERGE: Final = LayerSemantics.MERGE


class HiveMergeError(InvalidArgument):
    """The two hives cannot be merged; ``path`` names the key (``\\``-joined, root = "")."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"hive merge: key {path or '(root)'!r}: {why}")
        self.path = path
        self.why = why


@dataclass(frozen=True, slots=True)
class _Task:
    """One key path still to emit: attach the result to ``parent`` under ``slot``.

    ``base`` is None for a new key and for every descendant of a SupersedeTree node, whose
    lower subtree is hidden (rule 8): only rule 3 applies there and below.
    """

    base: Key | None
    delta: Key
    parent: Key
    slot: str


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
    root = _emit(base.root, droot)
    root.name = base.root.name
    root.flags = base.root.flags
    root.access_bits = base.root.access_bits
    stack = _child_tasks(base.root, droot, root)
    while stack:
        task = stack.pop()
        out = _emit(task.base, task.delta)
        task.parent.subkeys[task.slot] = out
        stack.extend(_child_tasks(task.base, task.delta, out))
    return Hive(
        root=root,
        minor_version=OUTPUT_MINOR_VERSION,
        flags=0,
        file_name=base.file_name,
        last_written=max(base.last_written, delta.last_written),
    )


def _emit(b: Key | None, d: Key) -> Key:
    """Return the output key for one path (without the delta's children, see ``_child_tasks``).

    ``b`` is None for rule 3 (a new key, or any key below a SupersedeTree node). The
    subkeys dict starts as a shallow copy of ``b``'s children (rules 5, 6) or empty.
    """
    sem = d.semantics
    if b is None:
        # Rule 3: a new key; InheritClass has nothing to inherit from.
        return Key(
            name=d.name,
            last_written=d.last_written,
            flags=d.flags,
            class_name=None if d.inherit_class else d.class_name,
            security=d.security,
            access_bits=d.access_bits,
            values=_apply_values([], d.values),
        )
    out = Key(
        name=b.name,
        last_written=max(b.last_written, d.last_written),
        flags=d.flags,
        class_name=b.class_name if d.inherit_class else d.class_name,
        security=d.security or b.security,
        access_bits=d.access_bits,
    )
    if sem == _SUPERSEDE_TREE:
        out.values = _apply_values([], d.values)  # rule 4
    elif sem == _SUPERSEDE_LOCAL:
        out.values = _apply_values([], d.values)  # rule 5
        out.subkeys = dict(b.subkeys)
    else:
        out.values = _apply_values(b.values, d.values)  # rule 6
        out.subkeys = dict(b.subkeys)
    return out


def _child_tasks(b: Key | None, d: Key, out: Key) -> list[_Task]:
    """Resolve ``d``'s children against ``b``'s: drop tombstones, return the rest as tasks.

    ``out.subkeys`` already holds ``b``'s children where they survive (rules 5, 6); a
    tombstone child removes its counterpart there (rules 2, 8), and every other child
    becomes a task that replaces or adds its slot.
    """
    lower_keys = None if b is None or d.semantics == _SUPERSEDE_TREE else b.subkeys
    tasks: list[_Task] = []
    for child in d.subkeys.values():
        slot = name_key(child.name)
        if child.semantics == _TOMBSTONE:
            out.subkeys.pop(slot, None)
            continue
        lower = None if lower_keys is None else lower_keys.get(slot)
        tasks.append(_Task(lower, child, out, slot))
    return tasks


def _apply_values(start: list[Value], changes: list[Value]) -> list[Value]:
    """Return ``start`` with ``changes`` applied (rule 6's value step).

    A tombstone removes the same-named value if there is one; any other change replaces it
    in place (keeping the existing name's casing) or is appended. Where one list names a
    value twice (invalid, but readable), only the first counts, as a lookup by name finds
    the first. Values are shared, not copied, unless a replacement needs the old casing.
    """
    if not changes:
        return list(start)
    merged: dict[str, Value] = {}
    for value in start:
        merged.setdefault(name_key(value.name), value)
    seen: set[str] = set()
    for change in changes:
        slot = name_key(change.name)
        if slot in seen:
            continue
        seen.add(slot)
        old = merged.get(slot)
        if change.tombstone:
            if old is not None:
                del merged[slot]
        elif old is not None:
            merged[slot] = (
                change
                if old.name == change.name
                else Value(name=old.name, type=change.type, data=change.data)
            )
        else:
            merged[slot] = change
    return list(merged.values())


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


def merge_files(
    base_path: str | os.PathLike[str],
    delta_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> Hive:
    """Merge the hive files ``base_path`` and ``delta_path`` into a new file ``out_path``.

    Returns the merged model. Raises :class:`NotFound` if an input is missing,
    :class:`AlreadyExists` if ``out_path`` exists (checked again atomically at the end),
    :class:`~cimsnap.hive.errors.HiveFormatError` for a malformed input (with a note naming
    the file),
    :class:`HiveMergeError` as :func:`merge` does, and ``OSError`` for I/O failures. On any
    failure ``out_path`` is not created and no temporary file is left behind. The
    temporary file lives beside ``out_path`` and is published with a hard link (the
    filesystem must support them, as every Linux one under a containerd root does).
    """
    out = os.fspath(out_path)
    if os.path.lexists(out):
        raise AlreadyExists(f"merged hive {out!r}: already exists; remove it or pick a new path")
    directory = os.path.dirname(os.path.abspath(out))
    with gc_paused():
        merged = merge(_read(base_path, "base"), _read(delta_path, "delta"))
        fd, tmp = tempfile.mkstemp(prefix=".hive-merge-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                write_hive_to(merged, f.write)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, out)  # no-clobber publish: fails if out appeared meanwhile
            except FileExistsError as e:
                raise AlreadyExists(f"merged hive {out!r}: created meanwhile by another") from e
        finally:
            os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return merged


def _read(path: str | os.PathLike[str], role: str) -> Hive:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise NotFound(f"{role} hive {os.fspath(path)!r}: not found") from e
    try:
        return read_hive(data)
    except HiveFormatError as e:
        e.add_note(f"in the {role} hive {os.fspath(path)!r}")
        raise
