"""Scale: deep and wide trees read without recursion limits and with bounded work."""

from __future__ import annotations

import random
import sys

import pytest

from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.format import FileAttribute
from cimsnap.cim.reader import CimReader
from cimsnap.cim.regions import open_image
from cimsnap.cim.verify import verify_image, verify_reader
from cimsnap.cim.writer import CimWriter
from tests.unit.cim.imagebuilder import ImageBuilder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_deep_tree_beyond_the_recursion_limit():
    depth = sys.getrecursionlimit() + 500
    b = ImageBuilder()
    parent = 1
    for _ in range(depth):
        parent = b.mkdir(parent, "d")
    b.add_file(parent, "leaf", b"bottom")
    built = b.build()
    r = CimReader(built.views(), built.offsets["filesystem"])
    deepest = "\\".join(["d"] * depth + ["leaf"])
    assert r.open_stream(deepest).read() == b"bottom"
    assert sum(1 for _ in r.walk()) == depth + 2
    assert verify_reader(r) == []


def test_wide_directory(tmp_path):
    count = 30_000
    names = [f"File-{i:06d}.{'ABC'[i % 3]}" for i in range(count)]
    with CimWriter(tmp_path, "wide.cim") as w:
        w.create_file("d", FileMetadata(attributes=int(FileAttribute.DIRECTORY)))
        for i, name in enumerate(names):
            data = i.to_bytes(4, "little")
            with w.create_file(f"d\\{name}", FileMetadata(size=4)) as stream:
                stream.write(data)
        w.commit()
    with open_image(tmp_path / "wide.cim") as image:
        r = image.reader
        assert len(r.listdir("d")) == count
        for i in random.Random(0).sample(range(count), 2000):
            assert r.open_stream(f"D\\{names[i].lower()}").read() == i.to_bytes(4, "little")
        assert r.file_table_count == (count + 1 + 1023) // 1024
        assert verify_image(image) == []
