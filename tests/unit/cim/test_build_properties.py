"""Property: build_from_directory stores a random Linux tree exactly, and a fork built from a
random layer (with OCI whiteouts) equals the parent tree with that layer applied."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.cim.build import build_from_directory
from cimsnap.cim.regions import open_image
from cimsnap.cim.upcase import NameOrder

KEY = NameOrder.default().key
#: "!x" sorts before ".wh.!x": whiteouts must not depend on name order.
NAMES = st.sampled_from(["!x", "a", "b", "c", "é", "ß", "😀", "long-name.txt"])

#: A tree: name -> bytes (file) or dict (directory). Names are unique case-insensitively.
trees = st.recursive(
    st.binary(max_size=6000),
    lambda children: st.dictionaries(NAMES, children, max_size=4),
    max_leaves=12,
).filter(lambda t: isinstance(t, dict))


def materialise(root: Path, tree: dict[str, object]) -> None:
    for name, value in tree.items():
        path = root / name
        if isinstance(value, dict):
            path.mkdir()
            materialise(path, value)
        else:
            assert isinstance(value, bytes)
            path.write_bytes(value)


def image_view(cim: Path) -> dict[str, object]:
    """path -> bytes | "dir", read back through the reader."""
    out: dict[str, object] = {}
    with open_image(cim) as image:
        reader = image.reader
        for path, record in reader.walk():
            if not path:
                continue
            out[path] = (
                "dir" if record.is_directory else reader.open_record_stream(record, None).read()
            )
    return out


def tree_view(tree: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in tree.items():
        path = f"{prefix}\\{name}" if prefix else name
        if isinstance(value, dict):
            out[path] = "dir"
            out.update(tree_view(value, path))
        else:
            out[path] = value
    return out


def apply_layer(base: dict[str, object], layer: dict[str, object]) -> dict[str, object]:
    """OCI semantics: whiteouts delete from the *lower* layer only (so they go first; a
    file in the same layer survives its whiteout), directories merge, the rest replaces."""
    result = dict(base)
    for name in layer:
        if name.startswith(".wh."):
            result.pop(name[4:], None)
    for name, value in layer.items():
        if name.startswith(".wh."):
            continue
        if isinstance(value, dict) and isinstance(result.get(name), dict):
            result[name] = apply_layer(result[name], value)  # type: ignore[arg-type]
        else:
            result[name] = value if not isinstance(value, dict) else apply_layer({}, value)
    return result


def layer_with_whiteouts(data: st.DataObject, base: dict[str, object]) -> dict[str, object]:
    layer: dict[str, object] = data.draw(trees)
    for name, value in base.items():
        if name not in layer and data.draw(st.booleans()):
            layer[f".wh.{name}"] = b""
        elif isinstance(value, dict) and isinstance(layer.get(name), dict):
            layer[name] = {**layer[name], **layer_with_whiteouts(data, value)}  # type: ignore[dict-item]
    return layer


@settings(
    max_examples=int(os.environ.get("CIMSNAP_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), base=trees)
def test_build_and_fork_match_the_trees(data: st.DataObject, base: dict[str, object]) -> None:
    layer = layer_with_whiteouts(data, base)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "base").mkdir()
        (root / "layer").mkdir()
        (root / "out").mkdir()
        materialise(root / "base", base)
        materialise(root / "layer", layer)
        report = build_from_directory(root / "base", root / "out" / "base.cim")
        assert report.problems == []
        assert image_view(root / "out" / "base.cim") == tree_view(base)
        report = build_from_directory(
            root / "layer", root / "out" / "layer.cim", parent=root / "out" / "base.cim"
        )
        assert report.problems == []
        assert image_view(root / "out" / "layer.cim") == tree_view(apply_layer(base, layer))
