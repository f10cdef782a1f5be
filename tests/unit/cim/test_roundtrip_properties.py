"""Property: whatever sequence of writer calls is made, the reader sees exactly its result.

Random operation sequences (Unicode and case-variant names, hard links, alternate streams,
sparse, partial and empty files, directory merges, deletes, replaces) are applied to a
CimWriter and, in parallel, to a tiny in-memory model that states the writer's documented
semantics (cimsnap.cim.pending docstring). The sequence is cut into 1-3 layers, each a
fork of the previous image; after every commit the image read back through
cimsnap.cim.regions/reader must equal the model, and earlier images must be unchanged.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.regions import open_image
from cimsnap.cim.upcase import NameOrder
from cimsnap.cim.verify import verify_path
from cimsnap.cim.writer import CimWriter

KEY = NameOrder.default().key
#: 60 examples keep the default suite near 20 s; raise it for a soak run, e.g.
#: ``CIMSNAP_PROPERTY_EXAMPLES=1000 pytest tests/unit/cim/test_roundtrip_properties.py``.
EXAMPLES = int(os.environ.get("CIMSNAP_PROPERTY_EXAMPLES", "60"))
#: Few letters, many case and Unicode variants, so collisions and replaces are frequent.
LETTERS = ["a", "A", "b", "B", "ß", "ẞ", "µ", "Μ", "é", "É", "😀", "ǅ", "ǆ", " "]
ATTRIBUTES = [0, 0x1, 0x2, 0x4, 0x20, 0x1 | 0x20, 0x2 | 0x4]


@dataclass(eq=False)
class Obj:
    """Model of one file object (identity = hard-link group)."""

    is_dir: bool
    attributes: int = 0
    times: tuple[int, int, int, int] = (0, 0, 0, 0)
    data: bytes = b""
    size: int = 0
    sparse: bool = False
    streams: dict[str, tuple[str, bytes, bool]] = field(default_factory=dict)
    children: dict[str, tuple[str, Obj]] = field(default_factory=dict)


names = (
    st.lists(st.sampled_from(LETTERS), min_size=1, max_size=3)
    .map("".join)
    .filter(lambda n: n.strip() == n)
)
contents = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda seed, n: (seed * (n // len(seed) + 1))[:n],
        st.binary(min_size=1, max_size=4),
        st.integers(4000, 20000),
    ),
)


def walk(root: Obj) -> dict[str, Obj]:
    """Model paths (stored casing) -> objects."""
    out = {"": root}
    stack = [("", root)]
    while stack:
        here, obj = stack.pop()
        for name, child in obj.children.values():
            path = f"{here}\\{name}" if here else name
            out[path] = child
            if child.is_dir:
                stack.append((path, child))
    return out


def lookup(root: Obj, parts: list[str]) -> Obj | None:
    obj: Obj | None = root
    for part in parts:
        if obj is None or not obj.is_dir:
            return None
        entry = obj.children.get(KEY(part))
        obj = entry[1] if entry else None
    return obj


def apply_random_op(data: st.DataObject, writer: CimWriter, root: Obj, clock: list[int]) -> None:
    paths = walk(root)
    dirs = [p for p, o in paths.items() if o.is_dir]
    files = [p for p, o in paths.items() if not o.is_dir]
    kind = data.draw(
        st.sampled_from(["file", "file", "dir", "link", "delete", "stream", "sparse", "partial"])
    )
    clock[0] += 1
    times = (clock[0], clock[0] + 1, clock[0] + 2, clock[0] + 3)
    if kind in ("file", "dir", "sparse", "partial"):
        parent = data.draw(st.sampled_from(sorted(dirs)))
        name = data.draw(names)
        path = f"{parent}\\{name}" if parent else name
        parent_obj = lookup(root, parent.split("\\") if parent else [])
        assert parent_obj is not None
        attributes = data.draw(st.sampled_from(ATTRIBUTES))
        existing = parent_obj.children.get(KEY(name))
        if kind == "dir":
            writer.create_file(
                path,
                FileMetadata(
                    attributes=attributes | 0x10,
                    creation_time=times[0],
                    last_write_time=times[1],
                    change_time=times[2],
                    last_access_time=times[3],
                ),
            )
            if existing is not None and existing[1].is_dir:
                existing[1].attributes, existing[1].times = attributes, times
            else:
                parent_obj.children[KEY(name)] = (name, Obj(True, attributes, times))
            return
        content = data.draw(contents)
        size = len(content)
        obj = Obj(False, attributes, times, data=content, size=size)
        if kind == "sparse":
            size = data.draw(st.integers(1, 1 << 40))
            obj = Obj(False, attributes | 0x200, times, data=b"", size=size, sparse=True)
        elif kind == "partial":
            size = size + data.draw(st.integers(1, 5000))
            obj = Obj(
                False, attributes, times, data=content + bytes(size - len(content)), size=size
            )
        stream = writer.create_file(
            path,
            FileMetadata(
                attributes=obj.attributes,
                size=size,
                creation_time=times[0],
                last_write_time=times[1],
                change_time=times[2],
                last_access_time=times[3],
            ),
        )
        if kind != "sparse":
            for start in range(0, len(content), 1500):
                stream.write(content[start : start + 1500])
        stream.close()
        parent_obj.children[KEY(name)] = (name, obj)
    elif kind == "link" and files:
        existing_path = data.draw(st.sampled_from(sorted(files)))
        parent = data.draw(st.sampled_from(sorted(dirs)))
        name = data.draw(names)
        path = f"{parent}\\{name}" if parent else name
        parent_obj = lookup(root, parent.split("\\") if parent else [])
        assert parent_obj is not None
        current = parent_obj.children.get(KEY(name))
        if current is not None and current[1].is_dir:
            return
        target = paths[existing_path]
        writer.create_hard_link(path, existing_path)
        if current is None or current[1] is not target:
            parent_obj.children[KEY(name)] = (name, target)
    elif kind == "delete" and len(paths) > 1:
        victim = data.draw(st.sampled_from(sorted(p for p in paths if p)))
        parent, _, name = victim.rpartition("\\")
        parent_obj = lookup(root, parent.split("\\") if parent else [])
        assert parent_obj is not None
        writer.delete_path(victim)
        del parent_obj.children[KEY(name)]
    elif kind == "stream":
        owner = data.draw(st.sampled_from(sorted(paths)))
        name = data.draw(names)
        content = data.draw(contents)
        unwritten = data.draw(st.booleans()) and len(content) > 0
        with writer.create_alternate_stream(f"{owner}:{name}", len(content)) as stream:
            if not unwritten:
                stream.write(content)
        stored = bytes(len(content)) if unwritten else content
        paths[owner].streams[KEY(name)] = (name, stored, unwritten)


def check_image(cim: Path, root: Obj) -> None:
    assert verify_path(cim) == []
    expected = walk(root)
    with open_image(cim) as image:
        reader = image.reader
        seen = {path: record for path, record in reader.walk()}
        assert set(seen) == set(expected)
        ids: dict[int, Obj] = {}
        for path, obj in expected.items():
            record = seen[path]
            assert ids.setdefault(record.file_id, obj) is obj, path
            info = reader.info(record, path)
            assert info.is_directory == obj.is_dir
            want = obj.attributes | (0x10 if obj.is_dir else 0)
            assert int(info.attributes) == want, path
            if path:
                assert (
                    info.creation_time,
                    info.last_write_time,
                    info.change_time,
                    info.last_access_time,
                ) == obj.times
            if not obj.is_dir:
                assert info.size == obj.size
                assert info.sparse == obj.sparse
                if not obj.sparse:
                    assert reader.open_record_stream(record, None).read() == obj.data
            streams = {s.name: s for s in reader.streams(path)}
            assert set(streams) == {name for name, _, _ in obj.streams.values()}, path
            for name, content, sparse in obj.streams.values():
                assert streams[name].sparse == sparse
                assert reader.open_record_stream(record, name).read() == content
        assert len({id(o) for o in expected.values()}) == len(ids)


def snapshot(root: Obj) -> dict[str, tuple[object, ...]]:
    return {
        p: (o.is_dir, o.data, o.size, o.attributes, tuple(sorted(o.streams.values())))
        for p, o in walk(root).items()
    }


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), layers=st.integers(1, 3), ops=st.integers(1, 25))
def test_written_images_read_back_identical(data: st.DataObject, layers: int, ops: int) -> None:
    root = Obj(True, 0)
    clock = [100]
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        committed: list[tuple[Path, dict[str, tuple[object, ...]]]] = []
        parent = None
        for layer in range(layers):
            name = f"l{layer}.cim"
            with CimWriter(directory, name, parent=parent) as writer:
                note(f"layer {layer}: {name} (parent {parent})")
                for _ in range(ops):
                    apply_random_op(data, writer, root, clock)
                writer.commit()
            check_image(directory / name, root)
            committed.append((directory / name, snapshot(root)))
            parent = name
        # Forks never disturb their parents: re-read every image against its own snapshot.
        for cim, expected in committed:
            with open_image(cim) as image:
                got = {p for p, _ in image.reader.walk()}
            assert got == set(expected)
