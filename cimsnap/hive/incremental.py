"""ORMergeHives in O(delta): edit a copy of the base hive in place (§4.4, §4.5).

The rules and every undocumented
choice come from :mod:`cimsnap.hive.rules`, the functions the whole-tree
:func:`cimsnap.hive.merge.merge` calls too; the result, read back as a tree, equals that
merge's (``tests/unit/hive/test_incremental.py``). :func:`merge_into` works on buffers;
:func:`cimsnap.hive.mergefiles.merge_files` is the file edge.

**What is touched.** The delta is decoded whole (it is small); the base is read through
:class:`~cimsnap.hive.image.HiveImage`, cell by cell, only where the delta leads: the keys
at the delta's paths, the child lists of those keys, and the subtrees a tombstone or a
SupersedeTree removes (their cells are freed, so that walk is proportional to what is
removed). Everything else keeps its bytes and offsets:

* a key present on both sides keeps its nk cell, patched in place (its name keeps the
  base's casing, so the cell size never changes): timestamp, flags, access bits, counts,
  list offsets, sk, class, the max-length fields;
* a changed value list, subkey list or class gets a new cell and the old one is freed;
  values the merge keeps keep their vk and data cells; a changed or added value gets new
  ones (:func:`~cimsnap.hive.writer.write_value`), a dropped one is freed with its data;
* a new key (rule 3, and every child of a SupersedeTree node) is written as a fresh
  subtree by the writer's :func:`~cimsnap.hive.writer.write_subtree`;
* subkey lists are rebuilt as the writer builds them (lh leaves of at most 512 sorted
  entries under an ri), keeping the base's lh hashes and computing those lf/li lack;
* sk reference counts and the circular list: :class:`~cimsnap.hive.skring.SecurityRing`;
* the base block is rewritten (:func:`~cimsnap.hive.writer.pack_base_block`): both
  sequence numbers = the base's primary + 1, minor version 6, flags 0, the bins' new
  length, FILETIME and file name per the decision table, checksum.

**Space.** Freed cells (with the free cells already in their bins, coalesced) are reused
first (best fit); the rest goes to new bins appended at the end. With ``N`` the bytes of
new cells that found no free cell, a merge grows the file by at most ``2 N + 32`` bytes
per appended bin ``+ 64 KiB`` (a bin is closed only when the next cell does not fit, so
its unused tail is smaller than that cell; the last bin's tail is under 64 KiB). Cells
that a later merge of a chain frees in those bins are reused by it, so a chain of deltas
that rewrite the same keys stops growing (``test_incremental`` pins both).

**Trust** (the spec is silent; the choice is the one an in-place editor must make). The
base is validated where it is read: its base block, and every cell the merge touches,
each bounds-checked (the bin chain is not walked: that would touch every page); a cell
freed twice is an error. An untouched damaged subtree is copied as it is and not
detected; ``check_hive`` finds it (``test_the_base_is_read_only_where_the_delta_leads``
pins this). The merge finds a base child by its lh hash or by binary search over the
sorted subkey list, as Windows does, so it relies on the order §4.1 requires. A base
whose base block declares layered keys (0x2) is scanned whole for layer marks first
(:class:`HiveMergeError`, as the whole-tree merge does); a base without the flag has
none by definition (its marks read as zero).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

from cimsnap.hive import cells as C
from cimsnap.hive.bins import AppendAllocator, put_offsets
from cimsnap.hive.errors import HiveFormatError, HiveModelError
from cimsnap.hive.image import NodeRecord
from cimsnap.hive.lazyimage import LazyImage
from cimsnap.hive.release import CellRelease
from cimsnap.hive.rules import (
    OUTPUT_MINOR_VERSION,
    HiveMergeError,
    inherits_class,
    merge_subtree,
    merged_class,
    merged_security,
    merged_timestamp,
    plan_values,
    subkeys_from_lower,
    values_from_lower,
)
from cimsnap.hive.skring import SecurityRing
from cimsnap.hive.tree import Hive, Key, LayerSemantics, name_key
from cimsnap.hive.writer import (
    pack_base_block,
    put_subkey_list,
    write_subtree,
    write_value,
)

__all__ = ["MergeStats", "merge_into"]

_B: Final = C.BASE_BLOCK_SIZE
_NK = C.NK_HEADER_FAST.struct
_NO_CELL: Final = C.NO_CELL
_TOMBSTONE: Final = LayerSemantics.TOMBSTONE
_KEY_COMP_NAME: Final = int(C.KeyFlags.COMP_NAME)
_DERIVED_KEY_FLAGS: Final = int(C.KeyFlags.HIVE_ENTRY | C.KeyFlags.COMP_NAME)
_ROOT_FLAGS: Final = int(C.KeyFlags.HIVE_ENTRY | C.KeyFlags.NO_DELETE)
#: Keys opened or finished and cells freed between two unmappings of the output's written
#: pages (see ``_unmap``): each may map a page-cache folio of up to a few hundred KiB.
_UNMAP_EVERY: Final = 1024
# Positions in the unpacked NK_HEADER tuple (checked by require_order in writer.py).
_F_FLAGS, _F_TIME, _F_ACCESS, _F_LAYER = 1, 2, 3, 4
_F_SUBKEY_COUNT, _F_SUBKEY_LIST, _F_VALUE_COUNT, _F_VALUE_LIST = 7, 9, 11, 12
_F_SECURITY, _F_CLASS, _F_MAX_NAME, _F_MAX_CLASS = 13, 14, 15, 16
_F_MAX_VALUE_NAME, _F_MAX_VALUE_DATA, _F_NAME_LENGTH, _F_CLASS_LENGTH = 17, 18, 20, 21


@dataclass(frozen=True, slots=True)
class MergeStats:
    """What an incremental merge did: the output's size; keys patched in place and keys
    written new; bytes of cells freed, of cells written (``bytes_reused`` of them in free
    cells), and of new bins appended (``bins_appended`` bins)."""

    output_size: int
    keys_patched: int
    keys_written: int
    bytes_freed: int
    bytes_written: int
    bytes_reused: int
    bytes_appended: int
    bins_appended: int


@dataclass(slots=True)
class _Pending:
    """A base key present in the delta, patched once its children are done."""

    off: int
    rec: NodeRecord
    header: list[int | bytes]
    delta: Key
    path: str
    depth: int
    parent: _Pending | None
    entries: list[tuple[int, int]] | None = None  # new subkey entries, None = unchanged
    child_classes_changed: bool = False
    # Entries differ from the base's by insertions and removals alone; ``removed`` holds
    # the (name size, class length) of each removed child.
    edited: bool = False
    removed: list[tuple[int, int]] = field(default_factory=list)
    added: list[int] = field(default_factory=list)  # nk offsets of the inserted children
    children: list[tuple[int, Key]] = field(default_factory=list)


def merge_into(
    read_at: Callable[[int, int], bytes],
    base_size: int,
    delta: Hive,
    out: mmap.mmap,
    *,
    page_budget: int = 2048,
) -> MergeStats:
    """Turn ``out``, a byte copy of a base hive, into the merge of ``delta`` onto it.

    ``read_at(offset, size)`` reads the base file (``base_size`` bytes), which must stay
    unchanged during the call; it is read only where the merge leads (a
    :class:`~cimsnap.hive.lazyimage.LazyImage`). ``out`` must be a writable shared ``mmap`` of
    the output file holding exactly the base's bytes; it is only written, never read (a
    read would map whole page-cache folios), and is resized to the merged hive's length.
    ``page_budget`` bounds the 4 KiB pages of the base held in memory at once (8 MiB by
    default; past it they are dropped and read again).

    Raises :class:`HiveFormatError` for a malformed base (naming the cell),
    :class:`HiveMergeError` as the whole-tree merge does, and
    :class:`~cimsnap.hive.errors.HiveModelError` for a delta key the format cannot hold;
    ``out`` is then garbage (the file edge deletes it).
    """
    image = LazyImage(read_at, base_size, max_pages=page_budget)
    try:
        return _Merge(image, delta, out).run()
    finally:
        image.close()


class _Merge:
    def __init__(self, image: LazyImage, delta: Hive, out: mmap.mmap) -> None:
        self.image = image
        self.delta = delta
        self.out = out
        self.cells = AppendAllocator(out, _B + self.image.end)
        self.keys_patched = self.keys_written = self.steps = 0
        self.sort_keys: dict[int, bytes] = {}
        # (name size, class length) of each child a parent's max fields must count, for
        # keys this merge wrote or patched (the rest are read from the base).
        self.sizes: dict[int, tuple[int, int]] = {}
        root = self.image.node(self.image.base.root_cell_offset)
        self.root_name = root.name
        self.security = SecurityRing(self.image, root.security)
        self.release = CellRelease(self.image, self.cells.free, self.security, self._step)

    def run(self) -> MergeStats:
        image, delta = self.image, self.delta
        if image.layered:
            _require_normal(image)
        if delta.root.semantics == _TOMBSTONE:
            raise HiveMergeError("", "the delta hive's root is a tombstone")
        appended_from = self.cells.bin_end
        root_off = image.base.root_cell_offset
        stack: list[_Pending | tuple[int, Key, str, int, _Pending | None]] = [
            (root_off, delta.root, self.root_name, 0, None)
        ]
        while stack:
            task = stack.pop()
            if isinstance(task, _Pending):
                self._finish_key(task)
                continue
            pending = self._open_key(*task)
            stack.append(pending)
            for child_off, child in pending.children:
                stack.append(
                    (child_off, child, pending.path + "\\" + child.name, pending.depth + 1, pending)
                )
            pending.children = []
        self.security.finish(self.out, self.release.cell)
        end = self.cells.finish()
        base = image.base
        pack_base_block(
            self.out,
            sequence=(base.sequence + 1) & 0xFFFFFFFF,
            last_written=max(base.last_written, delta.last_written),
            minor_version=OUTPUT_MINOR_VERSION,
            root_offset=root_off,
            hive_bins_size=end - _B,
            file_name=base.file_name,
            flags=0,
        )
        return MergeStats(
            output_size=end,
            keys_patched=self.keys_patched,
            keys_written=self.keys_written,
            bytes_freed=self.release.bytes_freed,
            bytes_written=self.cells.bytes_written,
            bytes_reused=self.cells.bytes_reused,
            bytes_appended=end - appended_from,
            bins_appended=self.cells.bins_opened,
        )

    # --- one key present on both sides ------------------------------------------------

    def _open_key(
        self, off: int, d: Key, path: str, depth: int, parent: _Pending | None
    ) -> _Pending:
        """Apply ``d`` to the base key at ``off``: values, class, sk, children resolved."""
        image = self.image
        rec = image.node(off)
        pos, _n = image.cell(off, "nk cell")
        header: list[int | bytes] = list(_NK.unpack_from(image.data, pos))
        task = _Pending(off, rec, header, d, path, depth, parent)
        header[_F_TIME] = merged_timestamp(rec.last_written, d)
        flags = rec.flags if parent is None else d.flags
        flags &= ~_DERIVED_KEY_FLAGS
        if parent is None:
            flags |= _ROOT_FLAGS
        header[_F_FLAGS] = (flags | (rec.flags & _KEY_COMP_NAME)) & 0xFFFF
        header[_F_ACCESS] = (rec.access_bits if parent is None else d.access_bits) & 0xFF
        header[_F_LAYER] = 0
        self._class(task)
        sd = merged_security(b"", d)
        if sd and sd != self.security.descriptor(rec.security):
            header[_F_SECURITY] = self.security.use(self.cells, sd)
            self.security.release(rec.security)
        self._values(task)
        self._children(task)
        self.keys_patched += 1
        self._step()
        return task

    def _class(self, task: _Pending) -> None:
        rec, header = task.rec, task.header
        if inherits_class(task.delta):
            return  # the base key's class cell stays
        chosen = merged_class(None, task.delta)
        old = self.image.class_name(rec, task.off)
        if (chosen or None) == old:
            return
        if rec.class_offset != _NO_CELL:
            self.release.cell(rec.class_offset)
        class_off, class_len = _NO_CELL, 0
        if chosen:
            data = chosen.encode("utf-16-le", "surrogatepass")
            if len(chosen) > 0x7FFF:
                raise HiveModelError(task.path, "class name longer than 32767 units")
            class_off = self.cells.alloc(len(data))
            start = _B + class_off + 4
            self.out[start : start + len(data)] = data
            class_len = len(data)
        header[_F_CLASS], header[_F_CLASS_LENGTH] = class_off, class_len
        if task.parent is not None:
            task.parent.child_classes_changed = True

    def _values(self, task: _Pending) -> None:
        image, rec, d, header = self.image, task.rec, task.delta, task.header
        from_lower = values_from_lower(d)
        if from_lower and not d.values:
            return
        base_vks = (
            image.offsets(rec.value_list, rec.value_count, "value list") if rec.value_count else ()
        )
        start = base_vks if from_lower else ()
        heads = [image.value_head(vk) for vk in start]
        plan = plan_values([h.name for h in heads], d.values)
        if len(plan) == len(base_vks) and all(p == i for i, p in enumerate(plan)):
            return  # every value kept in place (e.g. tombstones of values that do not exist)
        # Free before writing, so that the new cells can take the old ones' places.
        kept = {start[p] for p in plan if isinstance(p, int)}
        for vk in base_vks:
            if vk not in kept:
                self.release.value(vk)
        if rec.value_count:
            self.release.cell(rec.value_list)
        out_vks: list[int] = []
        max_name = max_data = 0
        for item in plan:
            if isinstance(item, int):
                out_vks.append(start[item])
                max_name = max(max_name, heads[item].name_size)
                max_data = max(max_data, heads[item].data_size)
            else:
                stored = write_value(self.cells, item, task.path, False)
                out_vks.append(stored.offset)
                max_name = max(max_name, stored.name_size)
                max_data = max(max_data, stored.data_size)
        header[_F_VALUE_COUNT] = len(out_vks)
        header[_F_VALUE_LIST] = put_offsets(self.cells, out_vks) if out_vks else _NO_CELL
        header[_F_MAX_VALUE_NAME], header[_F_MAX_VALUE_DATA] = max_name, max_data

    def _children(self, task: _Pending) -> None:
        """Resolve the delta's children: tombstones free, matches recurse, new ones written."""
        image, rec, d = self.image, task.rec, task.delta
        visible = subkeys_from_lower(d)
        if not d.subkeys and visible:
            return
        entries: list[tuple[int, int | None]] = image.subkey_entries(
            task.off, rec.subkey_count, rec.subkey_list
        )
        changed = False
        if not visible:
            for child_off, _hash in entries:
                self.release.subtree(child_off)
            changed = bool(entries)
            entries = []
        removed: set[int] = set()
        new: list[tuple[int, bytes, str, Key]] = []  # (position, sort key, folded, delta key)
        # Index the lh hashes when the delta names enough children to repay it (building
        # costs about a lookup's worth per 32 entries); lf/li entries have no hash.
        by_hash: dict[int, list[int]] | None = None
        if visible and len(d.subkeys) * 32 >= len(entries):
            by_hash = {}
            for i, (_o, h) in enumerate(entries):
                if h is not None:
                    by_hash.setdefault(h, []).append(i)
        for child in d.subkeys.values():
            folded = name_key(child.name)
            sort_key = folded.encode("utf-16-be", "surrogatepass")
            at, found = self._find(entries, by_hash, folded, sort_key) if visible else (0, False)
            if child.semantics == _TOMBSTONE:
                if found:
                    task.removed.append(self._sizes(entries[at][0]))
                    self.release.subtree(entries[at][0])
                    removed.add(at)
            elif found:
                task.children.append((entries[at][0], child))
            else:
                new.append((at, sort_key, folded, child))
        if not (changed or removed or new):
            return
        # Free before writing, so that the new cells can take the old ones' places.
        if rec.subkey_count:
            self.release.subkey_list(rec.subkey_list)
        inserted: list[tuple[int, bytes, int, int]] = []  # (position, sort key, nk, hash)
        for at, sort_key, folded, child in new:
            out = merge_subtree(None, child)
            nk = write_subtree(
                self.cells,
                self.security,
                out,
                parent_offset=task.off,
                path=task.path + "\\" + out.name,
                depth=task.depth + 1,
                differencing=False,
            )
            self.keys_written += _count_keys(out)
            # Just written, so reading it back maps no new page.
            self.sizes[nk] = _size_fields(_NK.unpack_from(self.out, _B + nk + 4))
            inserted.append((at, sort_key, nk, C.lh_hash_folded(folded)))
        inserted.sort()
        result: list[tuple[int, int]] = []
        j = 0
        for i, entry in enumerate(entries):
            while j < len(inserted) and inserted[j][0] == i:
                result.append(inserted[j][2:])
                j += 1
            if i in removed:
                continue
            child_off, lh = entry
            # The entry itself when it has its hash: no second tuple per child of a wide key.
            result.append(
                (child_off, self._hash(child_off)) if lh is None else cast(tuple[int, int], entry)
            )
        result.extend(entry[2:] for entry in inserted[j:])
        task.entries = result
        task.edited = not changed
        task.added = [entry[2] for entry in inserted]

    def _find(
        self,
        entries: list[tuple[int, int | None]],
        by_hash: dict[int, list[int]] | None,
        folded: str,
        sort_key: bytes,
    ) -> tuple[int, bool]:
        """Find ``sort_key`` in a sorted subkey list: (position or insertion point, found).

        With ``by_hash`` (entry positions by lh hash) the candidates are checked first, one
        name read each; a name not found that way (a new key, an lf/li list, a wrong
        hash) is looked up by binary search over the names, which also gives the
        insertion point.
        """
        if by_hash is not None:
            for i in by_hash.get(C.lh_hash_folded(folded), ()):
                if self._sort_key(entries[i][0]) == sort_key:
                    return i, True
        lo, hi = 0, len(entries)
        while lo < hi:
            mid = (lo + hi) // 2
            have = self._sort_key(entries[mid][0])
            if have == sort_key:
                return mid, True
            if have < sort_key:
                lo = mid + 1
            else:
                hi = mid
        return lo, False

    def _sort_key(self, off: int) -> bytes:
        key = self.sort_keys.get(off)
        if key is None:
            key = name_key(self.image.node(off).name).encode("utf-16-be", "surrogatepass")
            self.sort_keys[off] = key
        return key

    def _hash(self, off: int) -> int:
        return C.lh_hash_folded(name_key(self.image.node(off).name))

    def _finish_key(self, task: _Pending) -> None:
        """Write the key's subkey list and max-length fields, then its nk header."""
        header, out = task.header, self.out
        if task.entries is not None:
            header[_F_SUBKEY_COUNT] = len(task.entries)
            header[_F_SUBKEY_LIST] = put_subkey_list(self.cells, task.entries, task.path)
        if task.entries is not None or task.child_classes_changed:
            old_max = cast(int, header[_F_MAX_NAME])
            max_name, max_class = self._maxima(task, old_max & 0xFFFF, header[_F_MAX_CLASS])
            header[_F_MAX_NAME] = (old_max & ~0xFFFF) | (max_name & 0xFFFF)
            header[_F_MAX_CLASS] = max_class
        _NK.pack_into(out, _B + task.off + 4, *header)
        self.sizes[task.off] = _size_fields(header)
        self._step()

    def _maxima(self, task: _Pending, stored_name: int, stored_class: object) -> tuple[int, int]:
        """The largest child name size and class length of ``task``'s key after the merge.

        Reads only what can have changed: with children only added and removed and no
        class changed, the stored maxima still hold for the children kept, unless a
        removed child reached one; then the kept children are read only until one is
        found at that maximum (typical of lists of equally long names, e.g. GUIDs).
        """
        entries = task.entries
        if entries is None:
            rec = task.rec
            kept = self.image.subkey_entries(task.off, rec.subkey_count, rec.subkey_list)
            return self._largest(o for o, _h in kept)
        if not task.edited or task.child_classes_changed or not isinstance(stored_class, int):
            return self._largest(o for o, _h in entries)
        max_name, max_class = self._largest(task.added)
        if max_name >= stored_name and max_class >= stored_class:
            return max_name, max_class
        if _below(task, stored_name, stored_class):
            return max(max_name, stored_name), max(max_class, stored_class)
        added = set(task.added)
        for child, _h in entries:
            if child in added:
                continue
            name_size, class_len = self.sizes.get(child) or self._sizes(child)
            max_name, max_class = max(max_name, name_size), max(max_class, class_len)
            if max_name >= stored_name and max_class >= stored_class:
                break
        return max_name, max_class

    def _largest(self, children: Iterable[int]) -> tuple[int, int]:
        max_name = max_class = 0
        for child in children:
            name_size, class_len = self.sizes.get(child) or self._sizes(child)
            max_name, max_class = max(max_name, name_size), max(max_class, class_len)
        return max_name, max_class

    def _step(self) -> None:
        """Count a key opened or finished or a cell freed; unmap the output's pages every
        :data:`_UNMAP_EVERY` of them."""
        self.steps += 1
        if self.steps % _UNMAP_EVERY == 0:
            _unmap(self.out)

    def _sizes(self, off: int) -> tuple[int, int]:
        """(name size, class length) of the base nk at ``off``."""
        pos, _n = self.image.cell(off, "nk cell")
        return _size_fields(_NK.unpack_from(self.image.data, pos))


def _below(task: _Pending, max_name: int, max_class: int) -> bool:
    """Whether every removed child of ``task`` was below the stored maxima (so none of
    them was the one setting a maximum)."""
    return all(
        name < max_name and (not class_len or class_len < max_class)
        for name, class_len in task.removed
    )


def _size_fields(header: Sequence[int | bytes]) -> tuple[int, int]:
    """(name size in UTF-16 bytes, class length) from an unpacked nk header."""
    name_len, flags, class_len = header[_F_NAME_LENGTH], header[_F_FLAGS], header[_F_CLASS_LENGTH]
    if not (isinstance(name_len, int) and isinstance(flags, int) and isinstance(class_len, int)):
        raise TypeError("nk header fields out of order")
    return (2 * name_len if flags & _KEY_COMP_NAME else name_len), class_len


def _unmap(out: mmap.mmap) -> None:
    """Drop the output map's page mappings; the data stays in the page cache (dirty pages
    included, written back as usual), so nothing is lost.

    Every written byte maps a whole page-cache folio of the output file, up to hundreds of
    KiB on filesystems with large folios, and mapped pages count as the process's RSS;
    unmapping now and then bounds the merge's RSS by the work between two calls instead
    of by all the places it wrote.
    """
    if hasattr(mmap, "MADV_DONTNEED"):
        out.madvise(mmap.MADV_DONTNEED)


def _count_keys(key: Key) -> int:
    count, stack = 0, [key]
    while stack:
        count += 1
        stack.extend(stack.pop().subkeys.values())
    return count


def _require_normal(image: LazyImage) -> None:
    """Refuse a base with layer marks anywhere: a whole walk (so memory follows the base),
    done only for a base whose base block declares layered keys."""
    root = image.base.root_cell_offset
    stack: list[tuple[int, str, int]] = [(root, "", 0)]
    seen = {root}
    while stack:
        off, path, depth = stack.pop()
        rec = image.node(off)
        marked = rec.layer & (C.LAYER_SEMANTICS_MASK | C.INHERIT_CLASS)
        if rec.value_count and not marked:
            vks = image.offsets(rec.value_list, rec.value_count, "value list")
            marked = any(image.value_head(vk).tombstone for vk in vks)
        if marked:
            raise HiveMergeError(path, "the base hive has layer marks; it must be a normal hive")
        if depth >= C.MAX_KEY_DEPTH and rec.subkey_count:
            raise HiveFormatError("nk cell", off, f"keys nested deeper than {C.MAX_KEY_DEPTH}")
        for child in image.subkey_offsets(off, rec.subkey_count, rec.subkey_list):
            if child in seen:
                raise HiveFormatError("nk cell", child, "key reached twice (cycle)")
            seen.add(child)
            name = image.node(child).name
            stack.append((child, f"{path}\\{name}" if path else name, depth + 1))
