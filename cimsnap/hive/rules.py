"""The rules of ORMergeHives, shared by both merge engines.

For one key path, with ``b`` the base node (or none) and ``d`` the delta node (or none):

1. no ``d``: ``b``'s subtree is kept as it is;
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

Two engines apply these rules: the whole-tree :func:`cimsnap.hive.merge.merge` over two
in-memory trees (the test oracle), and the incremental
:mod:`cimsnap.hive.incremental` over a copy of the base file (what ``merge_files`` uses).
Every choice below is made by one function of this module that both call, so the two
cannot drift apart; ``tests/unit/hive/test_incremental.py`` checks that they agree.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from cimsnap.errdefs import InvalidArgument
from cimsnap.hive.tree import Key, LayerSemantics, Value, name_key

__all__ = [
    "OUTPUT_MINOR_VERSION",
    "HiveMergeError",
    "apply_values",
    "inherits_class",
    "merge_subtree",
    "merged_class",
    "merged_security",
    "merged_timestamp",
    "plan_values",
    "subkeys_from_lower",
    "values_from_lower",
]

#: Minor version of every merged hive (see the decision table).
OUTPUT_MINOR_VERSION: Final = 6

_TOMBSTONE: Final = LayerSemantics.TOMBSTONE
_SUPERSEDE_TREE: Final = LayerSemantics.SUPERSEDE_TREE
_MERGE: Final = LayerSemantics.MERGE

_T = TypeVar("_T")


class HiveMergeError(InvalidArgument):
    """The two hives cannot be merged; ``path`` names the key (``\\``-joined, root = "")."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"hive merge: key {path or '(root)'!r}: {why}")
        self.path = path
        self.why = why


# --- per-key decisions (``lower`` is whatever the engine uses for b's property) ----------


def merged_timestamp(lower: int | None, d: Key) -> int:
    """Key timestamp: ``max(b, d)``, or ``d``'s for a new key."""
    return d.last_written if lower is None else max(lower, d.last_written)


def merged_security(lower: _T, d: Key) -> bytes | _T:
    """Security: ``d``'s descriptor when it has one, else ``lower`` (``b``'s)."""
    return d.security or lower


def inherits_class(d: Key) -> bool:
    """Whether the merged key takes the lower key's class (InheritClass) or ``d``'s."""
    return d.inherit_class


def merged_class(lower: str | None, d: Key) -> str | None:
    """Class: ``lower`` (``b``'s; None for a new key, rule 3) with InheritClass, else ``d``'s."""
    return lower if inherits_class(d) else d.class_name


def values_from_lower(d: Key) -> bool:
    """Whether ``b``'s values are the starting point (rule 6) or dropped (rules 4 and 5)."""
    return d.semantics == _MERGE


def subkeys_from_lower(d: Key) -> bool:
    """Whether ``b``'s children stay visible below ``d`` (rules 5, 6) or not (rule 4)."""
    return d.semantics != _SUPERSEDE_TREE


def plan_values(start: Sequence[str], changes: Sequence[Value]) -> list[int | Value]:
    """Rule 6's value step over the names of the starting values.

    Returns the merged list: an ``int`` keeps ``start[i]`` as it is; a :class:`Value` is
    stored (a change, renamed to the replaced value's casing where that differs). A
    tombstone removes the same-named value if there is one; any other change replaces it
    in place or is appended. Where one list names a value twice (invalid, but readable),
    only the first counts; with no changes at all ``start`` is kept whole, duplicates
    included (see the decision table).
    """
    if not changes:
        return list(range(len(start)))
    merged: dict[str, int | Value] = {}
    names: dict[str, str] = {}
    for i, name in enumerate(start):
        slot = name_key(name)
        if slot not in merged:
            merged[slot] = i
            names[slot] = name
    seen: set[str] = set()
    for change in changes:
        slot = name_key(change.name)
        if slot in seen:
            continue
        seen.add(slot)
        old = names.get(slot)
        if change.tombstone:
            if old is not None:
                del merged[slot], names[slot]
        elif old is not None:
            merged[slot] = (
                change
                if old == change.name
                else Value(name=old, type=change.type, data=change.data)
            )
        else:
            merged[slot] = change
    return list(merged.values())


def apply_values(start: list[Value], changes: list[Value]) -> list[Value]:
    """:func:`plan_values` over in-memory values: unchanged values are shared, not copied."""
    return [
        start[p] if isinstance(p, int) else p for p in plan_values([v.name for v in start], changes)
    ]


# --- the tree walk (whole-tree merge; rule 3 subtrees of the incremental merge) ---------


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


def merge_subtree(b: Key | None, d: Key) -> Key:
    """Return the output key for the path where ``b`` (or None) and ``d`` meet.

    ``d`` must not be a tombstone (the caller drops those, rule 2). Unchanged subtrees of
    ``b`` and unchanged values of both are shared by reference. Iterative: any depth.
    """
    out = _emit(b, d)
    stack = _child_tasks(b, d, out)
    while stack:
        task = stack.pop()
        child = _emit(task.base, task.delta)
        task.parent.subkeys[task.slot] = child
        stack.extend(_child_tasks(task.base, task.delta, child))
    return out


def _emit(b: Key | None, d: Key) -> Key:
    """Return the output key for one path (without the delta's children, see ``_child_tasks``).

    ``b`` is None for rule 3 (a new key, or any key below a SupersedeTree node). The
    subkeys dict starts as a shallow copy of ``b``'s children (rules 5, 6) or empty.
    """
    if b is None:
        return Key(
            name=d.name,
            last_written=merged_timestamp(None, d),
            flags=d.flags,
            class_name=merged_class(None, d),
            security=merged_security(b"", d),
            access_bits=d.access_bits,
            values=apply_values([], d.values),
        )
    out = Key(
        name=b.name,
        last_written=merged_timestamp(b.last_written, d),
        flags=d.flags,
        class_name=merged_class(b.class_name, d),
        security=merged_security(b.security, d),
        access_bits=d.access_bits,
    )
    out.values = apply_values(b.values if values_from_lower(d) else [], d.values)
    if subkeys_from_lower(d):
        out.subkeys = dict(b.subkeys)
    return out


def _child_tasks(b: Key | None, d: Key, out: Key) -> list[_Task]:
    """Resolve ``d``'s children against ``b``'s: drop tombstones, return the rest as tasks.

    ``out.subkeys`` already holds ``b``'s children where they survive (rules 5, 6); a
    tombstone child removes its counterpart there (rules 2, 8), and every other child
    becomes a task that replaces or adds its slot.
    """
    lower_keys = None if b is None or not subkeys_from_lower(d) else b.subkeys
    tasks: list[_Task] = []
    for child in d.subkeys.values():
        slot = name_key(child.name)
        if child.semantics == _TOMBSTONE:
            out.subkeys.pop(slot, None)
            continue
        lower = None if lower_keys is None else lower_keys.get(slot)
        tasks.append(_Task(lower, child, out, slot))
    return tasks
