"""A path-by-path model of a stack of registry layers, used as the merge tests' oracle.

It restates the Windows layer format the way the kernel's layered keys read:
every path is resolved on its own by looking through the layers (0 = the normal base,
higher = later deltas), with no tree walking, no sharing and no stack. It is meant to be
obviously right, not fast.

For a path ``p`` and layer ``i``:

* a *floor* hides lower layers: a SupersedeTree node at ``p`` or an ancestor in layer ``i``
  hides layers below ``i``; a tombstone there hides layers up to and including ``i``;
* the *identity floor* is the same, except that a SupersedeTree node at ``p`` itself does
  not hide ``p``'s own lower nodes (rule 4's InheritClass and rule 7's properties use them);
* ``p`` exists if some layer at or above the floor has a node at ``p``;
* its values: from the floor up, SupersedeLocal/SupersedeTree nodes reset them, then each
  node's values are applied (a tombstone deletes; of two same-named values in one node
  only the first counts);
* class: the topmost node (down to the identity floor) without InheritClass gives it;
  none gives no class; timestamp: the max over those nodes; security: the topmost
  non-empty one; flags and access bits: the topmost node's (the root: layer 0's);
  name casing: the lowest node's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimsnap.hive.tree import Hive, Key, LayerSemantics, name_key

Path = tuple[str, ...]


@dataclass(frozen=True)
class KeyView:
    """What a reader sees at one path; values map the folded name to (type, data)."""

    name: str
    class_name: str | None
    last_written: int
    security: bytes
    flags: int
    access_bits: int
    values: tuple[tuple[str, int, bytes], ...]


def flatten(root: Key) -> dict[Path, Key]:
    """Map every path (folded names) to its node, tombstones included."""
    out: dict[Path, Key] = {}
    todo: list[tuple[Path, Key]] = [((), root)]
    while todo:
        path, key = todo.pop()
        out[path] = key
        todo.extend(((*path, name_key(c.name)), c) for c in key.subkeys.values())
    return out


def _floor(flats: list[dict[Path, Key]], path: Path, *, self_supersede: bool) -> int:
    floor = 0
    for i, flat in enumerate(flats):
        for depth in range(len(path) + 1):
            node = flat.get(path[:depth])
            if node is None:
                continue
            if node.semantics == LayerSemantics.TOMBSTONE:
                floor = max(floor, i + 1)
            elif node.semantics == LayerSemantics.SUPERSEDE_TREE and (
                self_supersede or depth < len(path)
            ):
                floor = max(floor, i)
    return floor


def layered_view(layers: list[Key]) -> dict[Path, KeyView]:
    """Return what a reader sees through ``layers`` (index 0 at the bottom)."""
    flats = [flatten(root) for root in layers]
    paths = {p for flat in flats for p in flat}
    view: dict[Path, KeyView] = {}
    for path in paths:
        floor = _floor(flats, path, self_supersede=True)
        nodes = [flat[path] for flat in flats[floor:] if path in flat]
        if not nodes:
            continue
        values: dict[str, tuple[str, int, bytes]] = {}
        for node in nodes:
            if node.semantics in (LayerSemantics.SUPERSEDE_LOCAL, LayerSemantics.SUPERSEDE_TREE):
                values = {}
            seen: set[str] = set()
            for v in node.values:
                if name_key(v.name) in seen:
                    continue  # a duplicate name: a lookup finds the first one only
                seen.add(name_key(v.name))
                if v.tombstone:
                    values.pop(name_key(v.name), None)
                else:
                    values[name_key(v.name)] = (name_key(v.name), v.type, v.data)
        id_floor = _floor(flats, path, self_supersede=False)
        same = [flat[path] for flat in flats[id_floor:] if path in flat]
        class_name = None
        for node in reversed(same):
            if not node.inherit_class:
                class_name = node.class_name
                break
        security = next((n.security for n in reversed(same) if n.security), b"")
        top = layers[0] if path == () else same[-1]
        view[path] = KeyView(
            name=same[0].name,
            class_name=class_name,
            last_written=max(n.last_written for n in same),
            security=security,
            flags=top.flags,
            access_bits=top.access_bits,
            values=tuple(sorted(values.values())),
        )
    return view


def hive_view(hive: Hive) -> dict[Path, KeyView]:
    """Return the view of a normal hive (a one-layer stack)."""
    return layered_view([hive.root])


def layer_marks(root: Key) -> list[Path]:
    """Return the paths of keys that carry any layer mark or a tombstone value."""
    return [
        path
        for path, key in flatten(root).items()
        if key.semantics or key.inherit_class or any(v.tombstone for v in key.values)
    ]
