"""The differ's view of a snapshotter: parsing CimFS mounts back, and checking them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cimsnap import errdefs
from cimsnap.snapshots.layer_commit import SCRATCH_DIR
from cimsnap.snapshots.mounts import Mount, cimfs_mount, parse_cimfs_mount
from cimsnap.snapshots.snapshotter import Snapshotter


@pytest.fixture
def sn(tmp_path: Path) -> Snapshotter:
    with Snapshotter(tmp_path / "root") as s:
        yield s


def test_parse_is_the_inverse_of_cimfs_mount() -> None:
    m = cimfs_mount(Path("/r/s"), Path("/r/s/cim-layers"), 9, (7, 3), readonly=False)
    spec = parse_cimfs_mount(m)
    assert spec.source == "/r/s/9" and spec.cim_path == "/r/s/cim-layers/9.cim"
    assert spec.parent_layer_paths == ("/r/s/7", "/r/s/3")
    assert spec.parent_cim_paths == ("/r/s/cim-layers/7.cim", "/r/s/cim-layers/3.cim")
    assert not spec.readonly


@pytest.mark.parametrize(
    "options",
    [
        ("rw",),
        ("rw", "cimpath="),
        ("rw", "cimpath=/a", "cimpath=/b"),
        ("rw", "cimpath=/a", "parentLayerPaths=[1]", "parentCimPaths=[]"),
        ("rw", "cimpath=/a", "parentLayerPaths=not json", "parentCimPaths=[]"),
        ("rw", "cimpath=/a", 'parentLayerPaths=["/x"]'),
    ],
)
def test_parse_rejects_malformed_options(options: tuple[str, ...]) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        parse_cimfs_mount(Mount("CimFS", "/r/s/1", "", options))


def test_extract_target_of_a_chain(sn: Snapshotter) -> None:
    sn.prepare("ns/1/base-active")
    sn.commit("ns/2/base", "ns/1/base-active")
    [mount] = sn.prepare("ns/3/extract-1 sha256:x", "ns/2/base")
    with sn.extract_target(parse_cimfs_mount(mount)) as target:
        assert target.key == "ns/3/extract-1 sha256:x"
        # Commit keeps the ID: the base is snapshot 1, the extract snapshot 2.
        assert target.layer_path == sn.snapshots_dir / "2"
        assert target.cim_path == sn.cim_dir / "2.cim"
        assert target.parent_cim_paths == (sn.cim_dir / "1.cim",)
        assert target.parent_layer_paths == (sn.snapshots_dir / "1",)
        # Claimed: containerd cannot commit or remove it while the layer is written.
        with pytest.raises(errdefs.FailedPrecondition):
            sn.commit("ns/4/layer", "ns/3/extract-1 sha256:x")
        with pytest.raises(errdefs.FailedPrecondition):
            sn.remove("ns/3/extract-1 sha256:x")
        with pytest.raises(errdefs.FailedPrecondition), sn.extract_target(parse_cimfs_mount(mount)):
            pass
    sn.remove("ns/3/extract-1 sha256:x")  # released afterwards


def test_extract_target_refusals(sn: Snapshotter, tmp_path: Path) -> None:
    [scratch] = sn.prepare("ns/1/not-an-unpack")
    assert (Path(scratch.source) / SCRATCH_DIR).is_dir()
    with pytest.raises(errdefs.FailedPrecondition), sn.extract_target(parse_cimfs_mount(scratch)):
        pass
    [mount] = sn.prepare("ns/2/extract-2 sha256:y")
    spec = parse_cimfs_mount(mount)
    bad = [
        replace(spec, source=str(tmp_path / "elsewhere" / "2")),
        replace(spec, source=str(sn.snapshots_dir / "cim-layers")),
        replace(spec, cim_path=str(sn.cim_dir / "1.cim")),
        replace(spec, parent_layer_paths=("/x",), parent_cim_paths=("/x.cim",)),
    ]
    for wrong in bad:
        with pytest.raises(errdefs.InvalidArgument), sn.extract_target(wrong):
            pass
    unknown = replace(spec, source=str(sn.snapshots_dir / "99"))  # an ID this root never had
    with pytest.raises(errdefs.FailedPrecondition), sn.extract_target(unknown):
        pass
    (sn.cim_dir / "2.cim").write_bytes(b"")  # applied already
    with pytest.raises(errdefs.AlreadyExists), sn.extract_target(spec):
        pass
    (sn.cim_dir / "2.cim").unlink()
    assert not list(sn.snapshots_dir.joinpath("2").iterdir())  # nothing written


def test_layer_stack(sn: Snapshotter) -> None:
    sn.prepare("ns/1/a")
    sn.commit("ns/2/base", "ns/1/a")
    [view] = sn.view("ns/3/v", "ns/2/base")
    stack = sn.layer_stack(parse_cimfs_mount(view))
    assert stack.key == "ns/3/v" and stack.cim_paths == (sn.cim_dir / "1.cim",)
