"""The incremental merge (``merge_files`` -> ``cimsnap.hive.incremental``) against the
whole-tree merge (``cimsnap.hive.merge.merge``, the oracle), through real files.

"Equal" means: the incremental output, read back by our reader, equals the oracle's result
written by the writer and read back (``Hive`` equality: every key, name, class, value in
order, timestamp, flags, SD, plus the base-block fields), and ``check_hive`` finds nothing
at all (no warnings either: exact max lengths, exact sk counts, no leaked cells), except
the warning about the random trees' fake security descriptors.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.devtools.synthetic_hive import software_base, software_delta
from cimsnap.hive import HiveFormatError, HiveReader, check_hive, read_hive, write_hive
from cimsnap.hive import cells as C
from cimsnap.hive import incremental as incremental_module
from cimsnap.hive.image import HiveImage
from cimsnap.hive.incremental import MergeStats, merge_into
from cimsnap.hive.merge import HiveMergeError, merge, merge_files
from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_NONE,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
)
from tests.unit.hive.external import hivex_dump, model_dump, regipy_dump, regipy_expected
from tests.unit.hive.forge import field_pos, patch_u32
from tests.unit.hive.layer_strategies import deltas_over, normal_hives

SEM = LayerSemantics
_B = C.BASE_BLOCK_SIZE
EQUIV = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle(base: bytes, delta: bytes) -> Hive:
    """The whole-tree merge of two hive images, as written and read back."""
    return read_hive(write_hive(merge(read_hive(base), read_hive(delta))))


def incremental(
    tmp: Path, base: bytes, delta: bytes, name: str = "out"
) -> tuple[bytes, MergeStats]:
    (tmp / f"{name}.base").write_bytes(base)
    (tmp / f"{name}.delta").write_bytes(delta)
    stats = merge_files(tmp / f"{name}.base", tmp / f"{name}.delta", tmp / name)
    return (tmp / name).read_bytes(), stats


def problems(data: bytes) -> list[str]:
    """check_hive's findings, warnings included, except the strategies' fake descriptors
    (``b"\\x01\\x00\\x04\\x80sd-one"`` is not a valid SD; the whole-tree output has the
    same warning)."""
    return [str(p) for p in check_hive(data) if "invalid security descriptor" not in p.why]


def assert_equivalent(tmp: Path, base: bytes, delta: bytes) -> bytes:
    out, stats = incremental(tmp, base, delta)
    assert problems(out) == []
    assert read_hive(out) == oracle(base, delta)
    assert stats.output_size == len(out)
    return out


@st.composite
def base_and_delta(draw: st.DrawFn) -> tuple[Hive, Hive]:
    base = draw(normal_hives())
    delta = draw(deltas_over(base))
    delta.last_written = draw(st.integers(0, 3))
    return base, delta


@EQUIV
@given(base_and_delta())
def test_random_merges_equal_the_whole_tree_merge(
    tmp_path_factory: pytest.TempPathFactory, pair: tuple[Hive, Hive]
) -> None:
    """All layer semantics (tombstones, SupersedeLocal/Tree, InheritClass, tombstone values,
    Windows-case name matches) on random trees."""
    base, delta = pair
    assert_equivalent(tmp_path_factory.mktemp("eq"), write_hive(base), write_hive(delta))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base_and_delta())
def test_hivex_and_regipy_read_random_outputs_as_we_do(
    tmp_path_factory: pytest.TempPathFactory, pair: tuple[Hive, Hive]
) -> None:
    """(String values whose bytes are not UTF-16, and DWORDs not of 4 bytes, become
    REG_BINARY first: regipy decodes them, and the helper predicting its output cannot.)"""
    tmp = tmp_path_factory.mktemp("ext")
    base, delta = (_utf16_strings(hive) for hive in pair)
    out, _ = incremental(tmp, write_hive(base), write_hive(delta))
    merged = read_hive(out)
    assert hivex_dump(tmp / "out") == model_dump(merged)
    assert regipy_dump(tmp / "out") == regipy_expected(merged)


def _utf16_strings(hive: Hive) -> Hive:
    stack = [hive.root]
    while stack:
        key = stack.pop()
        for value in key.values:
            if value.type in (REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ):
                try:
                    value.data.decode("utf-16-le")
                except UnicodeDecodeError:
                    value.type = REG_BINARY
            elif value.type == REG_DWORD and len(value.data) != 4:
                value.type = REG_BINARY
        stack.extend(key.subkeys.values())
    return hive


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_two_deltas_in_a_row_equal_two_whole_tree_merges(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    tmp = tmp_path_factory.mktemp("seq")
    base = data.draw(normal_hives())
    d1 = data.draw(deltas_over(base))
    d2 = data.draw(deltas_over(base))
    once, _ = incremental(tmp, write_hive(base), write_hive(d1), "one")
    twice, _ = incremental(tmp, once, write_hive(d2), "two")
    assert problems(twice) == []
    expected = oracle(write_hive(oracle(write_hive(base), write_hive(d1))), write_hive(d2))
    assert read_hive(twice) == expected


def _big_pair() -> tuple[bytes, bytes]:
    base = software_base(0.02)
    delta, _plan = software_delta(base, 0.02)
    return write_hive(base), write_hive(delta)


def test_a_software_like_merge_is_read_alike_by_hivex_and_regipy(tmp_path: Path) -> None:
    base, delta = _big_pair()
    out = assert_equivalent(tmp_path, base, delta)
    merged = read_hive(out)
    assert hivex_dump(tmp_path / "out") == model_dump(merged)
    assert regipy_dump(tmp_path / "out") == regipy_expected(merged)


def _cells_of_subtree(image: HiveImage, top: int) -> list[int]:
    """Every cell of the base subtree at ``top`` (nk, lists, values, data, class)."""
    found, stack = [], [top]
    while stack:
        off = stack.pop()
        rec = image.node(off)
        found.append(off)
        if rec.class_offset != C.NO_CELL:
            found.append(rec.class_offset)
        if rec.value_count:
            found.append(rec.value_list)
            for vk in image.offsets(rec.value_list, rec.value_count, "value list"):
                found += [vk, *image.value_cells(vk)]
        if rec.subkey_count:
            found += image.subkey_list_cells(rec.subkey_list)
            stack.extend(image.subkey_offsets(off, rec.subkey_count, rec.subkey_list))
    return found


def test_untouched_subtrees_keep_their_bytes_and_touched_keys_their_offsets(
    tmp_path: Path,
) -> None:
    base, delta = _big_pair()
    out, _stats = incremental(tmp_path, base, delta)
    base_reader, out_reader = HiveReader(base), HiveReader(out)
    delta_tree = read_hive(delta)
    untouched: list[int] = []
    same_place = 0
    for path, key in base_reader.walk():
        parts = [p for p in path.split("\\") if p]
        node: Key | None = delta_tree.root
        hidden = False
        for part in parts:
            assert node is not None
            if node.semantics in (SEM.TOMBSTONE, SEM.SUPERSEDE_TREE):
                hidden = True
                break
            node = node.subkey(part)
            if node is None:
                break
        if hidden:
            continue
        if node is None:
            if parts and delta_tree.root.find("\\".join(parts[:-1])) is not None:
                untouched.append(key.offset)  # the top of an untouched subtree
        elif node.semantics != SEM.TOMBSTONE:
            kept = out_reader.find_key(path)
            assert kept is not None and kept.offset == key.offset  # patched in place
            same_place += 1
    assert len(untouched) > 1000 and same_place > 50
    cells = [c for top in untouched for c in _cells_of_subtree(base_reader.image, top)]
    for cell in cells[:: max(1, len(cells) // 5000)]:
        size = -int.from_bytes(base[_B + cell : _B + cell + 4], "little", signed=True)
        assert out[_B + cell : _B + cell + size] == base[_B + cell : _B + cell + size]


def _same_keys_delta(round_: int) -> Hive:
    """A delta that edits the same keys every time: a value, a tombstone, a new subkey."""
    root = Key("ROOT", inherit_class=True)
    cv = root.add_subkey(Key("Microsoft", inherit_class=True))
    cv = cv.add_subkey(Key("Windows NT", inherit_class=True))
    cv = cv.add_subkey(Key("CurrentVersion", inherit_class=True, last_written=round_))
    cv.values = [
        Value("CurrentBuild", REG_SZ, f"{20348 + round_}\0".encode("utf-16-le")),
        Value("Patch", REG_SZ, ("x" * (10 + 97 * round_ % 300) + "\0").encode("utf-16-le")),
    ]
    cv.add_subkey(Key(f"Gen{round_ - 1}", semantics=SEM.TOMBSTONE))
    cv.add_subkey(Key(f"Gen{round_}", class_name="g" * round_)).values = [
        Value("n", REG_SZ, bytes(40 * round_))
    ]
    return Hive(root=root, minor_version=6, flags=0x2)


def test_a_chain_of_ten_deltas_stays_valid_and_its_growth_is_bounded(tmp_path: Path) -> None:
    """Ten software-like deltas one after another: each output equals the whole-tree
    chain and checks clean. Bound (documented in cimsnap.hive.incremental): a merge grows
    the file by at most twice the bytes of the new cells that found no free cell, plus 32
    bytes per new bin and 64 KiB; and deltas that rewrite the same keys reuse the cells
    freed by the previous one, so after the first round such a chain does not grow."""
    base_bytes, _delta = _big_pair()
    current, tree = base_bytes, read_hive(base_bytes)
    for i in range(10):
        delta, _plan = software_delta(tree, 0.02, seed=100 + i)
        delta_bytes = write_hive(delta)
        out, stats = incremental(tmp_path, current, delta_bytes, f"chain{i}")
        assert check_hive(out) == []
        tree = read_hive(write_hive(merge(tree, read_hive(delta_bytes))))
        assert read_hive(out) == tree
        assert len(out) - len(current) == stats.bytes_appended
        fresh = stats.bytes_written - stats.bytes_reused
        assert stats.bytes_appended <= 2 * fresh + 32 * stats.bins_appended + 65536
        current = out
    sizes = []
    for i in range(1, 11):
        current, stats = incremental(tmp_path, current, write_hive(_same_keys_delta(i)), f"same{i}")
        assert check_hive(current) == []
        sizes.append(len(current))
    assert read_hive(current).root.find(r"Microsoft\Windows NT\CurrentVersion\Gen10") is not None
    assert max(sizes[1:]) == sizes[0], sizes
    assert hivex_dump(tmp_path / "same10") == model_dump(read_hive(current))


def test_the_base_is_read_only_where_the_delta_leads(tmp_path: Path) -> None:
    """Bytes read from the base stay a small part of it, and damage where the delta does
    not lead is copied, not read (the documented trust rule): a vk signature broken in an
    untouched key makes the whole-tree reader fail but not the incremental merge."""
    base, delta = _big_pair()
    reader = HiveReader(base)
    victim = reader.open_key(r"Microsoft\Windows NT\CurrentVersion").offset  # touched
    untouched = next(
        key for path, key in reader.walk() if path.startswith("Vendors\\") and key.values()
    )
    vk = untouched.values()[0].offset
    broken = bytearray(base)
    broken[_B + vk + 4 : _B + vk + 6] = b"XX"
    with pytest.raises(HiveFormatError):
        read_hive(bytes(broken))
    out, _stats = incremental(tmp_path, bytes(broken), delta)
    assert out[_B + vk + 4 : _B + vk + 6] == b"XX"
    assert HiveReader(out).open_key(r"Microsoft\Windows NT\CurrentVersion").offset == victim

    read = 0

    def read_at(offset: int, size: int) -> bytes:
        nonlocal read
        read += size
        return base[offset : offset + size]

    (tmp_path / "copy").write_bytes(base)
    with open(tmp_path / "copy", "r+b") as f, mmap.mmap(f.fileno(), len(base)) as target:
        merge_into(read_at, len(base), read_hive(delta), target)
    assert read < len(base) // 3, (read, len(base))


def test_a_tiny_page_budget_gives_the_same_bytes(tmp_path: Path) -> None:
    """Dropping the base's page copies (here after every 3 pages) never loses a read."""
    base, delta = _big_pair()
    reference, _ = incremental(tmp_path, base, delta)
    (tmp_path / "copy").write_bytes(base)
    with open(tmp_path / "copy", "r+b") as f, mmap.mmap(f.fileno(), len(base)) as target:
        merge_into(lambda o, n: base[o : o + n], len(base), read_hive(delta), target, page_budget=3)
    assert (tmp_path / "copy").read_bytes() == reference


def _forged(tmp: Path, base: bytes, delta: Hive) -> HiveFormatError:
    (tmp / "b").write_bytes(base)
    (tmp / "d").write_bytes(write_hive(delta))
    with pytest.raises(HiveFormatError) as exc:
        merge_files(tmp / "b", tmp / "d", tmp / "out")
    assert sorted(os.listdir(tmp)) == ["b", "d"]
    assert any("base" in note for note in exc.value.__notes__)
    return exc.value


def _two_keys() -> bytes:
    root = Key("ROOT")
    for name in ("one", "two"):
        root.add_subkey(Key(name)).values = [Value("v", REG_SZ, b"a\0b\0c\0")]
    return write_hive(Hive(root=root))


def _tombstones(*names: str) -> Hive:
    root = Key("ROOT", inherit_class=True)
    for name in names:
        root.add_subkey(Key(name, semantics=SEM.TOMBSTONE))
    return Hive(root=root, minor_version=6, flags=0x2)


def test_a_damaged_key_on_the_deltas_path_is_a_format_error_naming_it(tmp_path: Path) -> None:
    base = _two_keys()
    one = HiveReader(base).open_key("one").offset
    broken = bytearray(base)
    broken[_B + one + 4 : _B + one + 6] = b"kn"
    delta = Hive(root=Key("ROOT", inherit_class=True), minor_version=6, flags=0x2)
    delta.root.add_subkey(Key("ONE", inherit_class=True)).values = [Value("x", REG_SZ, b"")]
    error = _forged(tmp_path, bytes(broken), delta)
    assert (error.what, error.offset) == ("nk cell", one)


def test_a_cell_shared_by_two_keys_is_refused_when_both_are_freed(tmp_path: Path) -> None:
    base = _two_keys()
    reader = HiveReader(base)
    one, two = reader.open_key("one").offset, reader.open_key("two").offset
    shared = reader.image.node(one).value_list
    vks = reader.image.offsets(shared, 1, "value list")
    data_cells = [c for vk in vks for c in reader.image.value_cells(vk)]
    forged = patch_u32(base, two, C.NK_HEADER, "value_list", shared)
    error = _forged(tmp_path, forged, _tombstones("one", "two"))
    assert error.what == "cell" and error.offset in {shared, *vks, *data_cells}


def test_an_sk_count_below_its_users_is_a_format_error(tmp_path: Path) -> None:
    base = _two_keys()
    sk = HiveReader(base).image.node(HiveReader(base).open_key("one").offset).security
    forged = patch_u32(base, sk, C.SK_HEADER, "reference_count", 1)
    error = _forged(tmp_path, forged, _tombstones("one", "two"))
    assert (error.what, error.offset) == ("sk cell", sk)


def test_a_base_flagged_layered_is_scanned_for_marks(tmp_path: Path) -> None:
    """Flag 0x2 on the base: marks anywhere are refused, as by the whole-tree merge; a
    flagged base without marks merges (and the output is a normal hive)."""
    root = Key("ROOT")
    root.add_subkey(Key("clean"))
    deep = root.add_subkey(Key("far")).add_subkey(Key("away"))
    flagged = write_hive(Hive(root=root, minor_version=6, flags=0x2))
    delta = Hive(root=Key("ROOT", inherit_class=True), minor_version=6, flags=0x2)
    delta.root.add_subkey(Key("clean", inherit_class=True))
    out = assert_equivalent(tmp_path, flagged, write_hive(delta))
    assert not read_hive(out).is_differencing
    deep.inherit_class = True
    marked = write_hive(Hive(root=root, minor_version=6, flags=0x2))
    (tmp_path / "m").write_bytes(marked)
    (tmp_path / "d").write_bytes(write_hive(delta))
    with pytest.raises(HiveMergeError) as exc:
        merge_files(tmp_path / "m", tmp_path / "d", tmp_path / "out2")
    assert exc.value.path == "far\\away"
    assert not (tmp_path / "out2").exists()


def test_without_copy_file_range_the_copy_falls_back_to_read_and_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault we cannot produce on this filesystem: copy_file_range refused (EXDEV)."""
    base, delta = _big_pair()
    reference, _ = incremental(tmp_path, base, delta, "ref")

    def refuse(*_args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    copied, _ = incremental(tmp_path, base, delta, "fallback")
    assert copied == reference


def test_the_base_block_is_rewritten(tmp_path: Path) -> None:
    base, delta = _big_pair()
    out, _ = incremental(tmp_path, base, delta)
    fields = C.BASE_BLOCK_FAST.unpack_named(out)
    before = C.BASE_BLOCK_FAST.unpack_named(base)
    assert fields["primary_sequence"] == fields["secondary_sequence"]
    assert fields["primary_sequence"] == before["primary_sequence"] + 1
    assert fields["hive_bins_data_size"] == len(out) - _B
    assert (fields["minor_version"], fields["flags"]) == (6, 0)
    assert fields["checksum"] == C.base_block_checksum(out)
    assert fields["root_cell_offset"] == before["root_cell_offset"]
    assert field_pos(C.BASE_BLOCK, "checksum") == C.CHECKSUM_OFFSET


def test_large_subkey_lists_are_rebuilt_as_ri_of_lh_leaves(tmp_path: Path) -> None:
    """A key with 1,100 children gains and loses some: the new list is an ri of lh leaves
    of at most 512 entries, sorted, hashed; a key dropping to 400 gets one lh list."""
    root = Key("ROOT")
    wide = root.add_subkey(Key("Wide"))
    shrink = root.add_subkey(Key("Shrink"))
    for i in range(1100):
        wide.add_subkey(Key(f"k{i:05d}", class_name="c" * (i % 7)))
        shrink.add_subkey(Key(f"s{i:05d}"))
    base = write_hive(Hive(root=root))
    droot = Key("ROOT", inherit_class=True)
    dwide = droot.add_subkey(Key("WIDE", inherit_class=True))
    for name in ("k00000", "k00513", "k01099"):
        dwide.add_subkey(Key(name, semantics=SEM.TOMBSTONE))
    for name in ("a-first", "k00512x", "zz-last-and-longest-name"):
        dwide.add_subkey(Key(name, class_name="a much longer class name"))
    dshrink = droot.add_subkey(Key("shrink", inherit_class=True))
    for i in range(700):
        dshrink.add_subkey(Key(f"S{i:05d}", semantics=SEM.TOMBSTONE))
    out = assert_equivalent(
        tmp_path, base, write_hive(Hive(root=droot, minor_version=6, flags=0x2))
    )
    image = HiveReader(out).image
    for path, count in (("Wide", 1100), ("Shrink", 400)):
        rec = image.node(HiveReader(out).open_key(path).offset)
        assert rec.subkey_count == count
        sig, leaves = image.list_leaf(rec.subkey_list, leaf_only=False)
        if count > 512:
            assert sig == b"ri"
            assert all(len(image.list_leaf(leaf, leaf_only=True)[1]) <= 512 for leaf in leaves)
        else:
            assert sig == b"lh"


def test_big_data_values_are_freed_and_written_as_db_records(tmp_path: Path) -> None:
    """Values above 16,344 bytes (db records with segment lists): replaced, tombstoned,
    and dropped with their key; check_hive's leak check proves every segment was freed."""
    root = Key("ROOT")
    big = root.add_subkey(Key("Big"))
    big.values = [
        Value("keep", REG_BINARY, bytes(range(256)) * 100),
        Value("replace", REG_BINARY, b"\x01" * 40_000),
        Value("drop", REG_BINARY, b"\x02" * 50_000),
    ]
    root.add_subkey(Key("Gone")).values = [Value("huge", REG_BINARY, b"\x03" * 70_000)]
    base = write_hive(Hive(root=root))
    droot = Key("ROOT", inherit_class=True)
    dbig = droot.add_subkey(Key("big", inherit_class=True))
    dbig.values = [
        Value("REPLACE", REG_BINARY, b"\x04" * 33_000),
        Value("drop", REG_NONE, b"", tombstone=True),
        Value("new", REG_BINARY, b"\x05" * 17_000),
    ]
    droot.add_subkey(Key("gone", semantics=SEM.TOMBSTONE))
    out = assert_equivalent(tmp_path, base, write_hive(Hive(droot, minor_version=6, flags=0x2)))
    merged = read_hive(out).root.subkey("big")
    assert merged is not None
    assert [(v.name, len(v.data)) for v in merged.values] == [
        ("keep", 25_600),
        ("replace", 33_000),
        ("new", 17_000),
    ]
    assert hivex_dump(tmp_path / "out") == model_dump(read_hive(out))


@pytest.mark.parametrize(
    ("removed", "added"),
    [
        (["longest-name-of-all"], []),  # the unique maximum goes: read the rest
        (["same-b"], []),  # one of several at the maximum goes: any kept one confirms it
        (["short"], ["tiny"]),  # below the maxima: nothing read
        (["longest-name-of-all", "same-a"], ["an-even-longer-name-than-before"]),
    ],
)
def test_max_lengths_stay_exact_when_children_come_and_go(
    tmp_path: Path, removed: list[str], added: list[str]
) -> None:
    root = Key("ROOT")
    parent = root.add_subkey(Key("P"))
    for name, cls in (("longest-name-of-all", "c" * 9), ("same-a", "c" * 30)):
        parent.add_subkey(Key(name, class_name=cls))
    for name in ("same-b", "same-c", "short"):
        parent.add_subkey(Key(name, class_name="c" * 30 if name == "same-b" else None))
    droot = Key("ROOT", inherit_class=True)
    dparent = droot.add_subkey(Key("p", inherit_class=True))
    for name in removed:
        dparent.add_subkey(Key(name, semantics=SEM.TOMBSTONE))
    for name in added:
        dparent.add_subkey(Key(name))
    base, delta = write_hive(Hive(root=root)), write_hive(Hive(droot, minor_version=6, flags=2))
    out = assert_equivalent(tmp_path, base, delta)  # check_hive flags any stale maximum
    assert read_hive(out).root.subkey("p") is not None


def test_unmapping_the_output_after_every_step_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output map's pages are dropped now and then to bound RSS (dirty data stays in
    the page cache); dropping them after every key and freed cell gives the same bytes."""
    base, delta = _big_pair()
    reference, _ = incremental(tmp_path, base, delta, "ref")
    monkeypatch.setattr(incremental_module, "_UNMAP_EVERY", 1)
    unmapped, _ = incremental(tmp_path, base, delta, "unmapped")
    assert unmapped == reference


def _lh_to_lf(data: bytes) -> bytes:
    """``data`` with every lh leaf relabelled lf (same layout; the hash reads as a hint)."""
    buf = bytearray(data)
    image = HiveReader(data).image
    for _path, key in HiveReader(data).walk():
        rec = image.node(key.offset)
        if rec.subkey_count:
            for cell in image.subkey_list_cells(rec.subkey_list):
                pos = _B + cell + 4
                if buf[pos : pos + 2] == b"lh":
                    buf[pos : pos + 2] = b"lf"
    return bytes(buf)


def test_a_base_with_lf_lists_gets_lh_lists_with_computed_hashes(tmp_path: Path) -> None:
    """lf leaves carry no hash: the children are found by name, and the rebuilt lists are
    lh with the hashes computed (check_hive verifies each one)."""
    root = Key("ROOT")
    wide = root.add_subkey(Key("Wide"))
    for i in range(700):
        wide.add_subkey(Key(f"k{i:04d}"))
    base = _lh_to_lf(write_hive(Hive(root=root)))
    assert b"lf" in base and check_hive(base) == []
    droot = Key("ROOT", inherit_class=True)
    dwide = droot.add_subkey(Key("wide", inherit_class=True))
    dwide.add_subkey(Key("K0005", semantics=SEM.TOMBSTONE))
    dwide.add_subkey(Key("k0600", inherit_class=True)).values = [Value("v", REG_SZ, b"x\0")]
    dwide.add_subkey(Key("k0350a"))
    out = assert_equivalent(tmp_path, base, write_hive(Hive(droot, minor_version=6, flags=0x2)))
    image = HiveReader(out).image
    rec = image.node(HiveReader(out).open_key("Wide").offset)
    sig, leaves = image.list_leaf(rec.subkey_list, leaf_only=False)
    assert sig == b"ri"
    assert {image.list_leaf(leaf, leaf_only=True)[0] for leaf in leaves} == {b"lh"}
