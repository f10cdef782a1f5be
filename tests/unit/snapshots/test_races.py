"""Racing Commit, Remove, Prepare and Cleanup on the same keys: only errdefs errors, and
afterwards every committed layer is intact and cleanup leaves no orphan behind."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

from cimsnap.errdefs import CimsnapError
from cimsnap.snapshots.snapshotter import Kind, Snapshotter
from cimsnap.wclayer.layer_files import cim_layer_files, cim_layer_problem


def test_racing_operations_stay_consistent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    unexpected: list[BaseException] = []
    with Snapshotter(root) as sn:
        sn.prepare("base-a")
        sn.commit("base", "base-a")

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(40):
                i = rnd.randrange(6)
                op = rnd.choice(["prepare", "commit", "remove", "remove-c", "cleanup"])
                try:
                    if op == "prepare":
                        mounts = sn.prepare(f"k{i}", "base")
                        # another thread may have removed or committed it meanwhile
                        with contextlib.suppress(FileNotFoundError):
                            (Path(mounts[0].source) / "scratch" / "f").write_text(str(i))
                    elif op == "commit":
                        sn.commit(f"c{i}", f"k{i}")
                    elif op == "remove":
                        sn.remove(f"k{i}")
                    elif op == "remove-c":
                        sn.remove(f"c{i}")
                    else:
                        sn.cleanup()
                except CimsnapError:
                    pass  # NotFound, AlreadyExists, FailedPrecondition: expected in a race
                except BaseException as e:  # collected and asserted below
                    unexpected.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert unexpected == []

        sn.cleanup()
        infos = sn.list()
        ids: set[str] = set()
        expected_files: set[str] = set()
        for info in infos:
            if info.kind == Kind.COMMITTED:
                view = sn.view(f"v-{info.name}", info.name)
                (option,) = [o for o in view[0].options if o.startswith("parentLayerPaths=")]
                layer_id = option.split('"')[1].rsplit("/", 1)[1]
                cim = root / "snapshots" / "cim-layers" / f"{layer_id}.cim"
                assert cim_layer_problem(cim) is None
                expected_files.update(p.name for p in cim_layer_files(cim))
                sn.remove(f"v-{info.name}")
                ids.add(layer_id)
            else:
                ids.add(Path(sn.mounts(info.name)[0].source).name)
        sn.cleanup()
        assert sorted(os.listdir(root / "snapshots")) == sorted([*ids, "cim-layers"])
        assert set(os.listdir(root / "snapshots" / "cim-layers")) == expected_files
