"""A stateful property test: the metastore against a plain dict model of containerd's rules.

Random sequences of create/commit/remove/update run on a real SQLite file (on tmpfs when
available, so FULL-synchronous commits stay cheap) and on the model; every step must raise
the same error class or succeed on both, and the full contents must agree afterwards.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cimsnap.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cimsnap.store import (
    Kind,
    Store,
    Usage,
    commit_active,
    create_snapshot,
    get_snapshot,
    remove,
    update_info,
    walk_rows,
)

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
PARENTS = st.sampled_from(["", "a", "b", "c", "d", "e", "f", "zz"])
LABELS = st.dictionaries(
    st.sampled_from(["x", "y", "z"]), st.sampled_from(["", "1", "2"]), max_size=3
)
PATHS = st.lists(st.sampled_from(["labels", "labels.x", "labels.y", "parent"]), max_size=3)
_SHM = Path("/dev/shm")


@dataclass
class Entry:
    kind: Kind
    parent: str
    labels: dict[str, str] = field(default_factory=dict)


def clean(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v}


class MetastoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory(dir=_SHM if _SHM.is_dir() else None)
        self.store = Store(Path(self.dir.name) / "m.db")
        self.model: dict[str, Entry] = {}
        self.clock = 0

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    def expect(self, error: type[Exception] | None, call: object) -> None:
        try:
            with self.store.write() as tx:
                call(tx)  # type: ignore[operator]
        except (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound) as e:
            assert type(e) is error, f"got {type(e).__name__}, model says {error}"
            return
        assert error is None, f"succeeded, model says {error.__name__}"

    @rule(kind=st.sampled_from([Kind.ACTIVE, Kind.VIEW]), key=KEYS, parent=PARENTS, labels=LABELS)
    def create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> None:
        error: type[Exception] | None = None
        if key in self.model:
            error = AlreadyExists
        elif parent and parent not in self.model:
            error = NotFound
        elif parent and self.model[parent].kind != Kind.COMMITTED:
            error = InvalidArgument
        now = self.tick()
        self.expect(error, lambda tx: create_snapshot(tx, kind, key, parent, labels, now))
        if error is None:
            self.model[key] = Entry(kind, parent, clean(labels))

    @rule(key=KEYS, name=KEYS, parent=PARENTS, labels=LABELS)
    def commit(self, key: str, name: str, parent: str, labels: dict[str, str]) -> None:
        entry = self.model.get(key)
        error: type[Exception] | None = None
        if name in self.model:
            error = AlreadyExists
        elif entry is None:
            error = NotFound
        elif entry.kind != Kind.ACTIVE:
            error = FailedPrecondition
        elif parent and entry.parent and parent != entry.parent:
            error = InvalidArgument
        elif parent and parent not in self.model:
            error = NotFound
        elif parent and self.model[parent].kind != Kind.COMMITTED:
            error = FailedPrecondition
        now = self.tick()
        self.expect(
            error, lambda tx: commit_active(tx, key, name, Usage(1, 1), labels, parent, now)
        )
        if error is None:
            assert entry is not None
            del self.model[key]
            self.model[name] = Entry(Kind.COMMITTED, entry.parent or parent, clean(labels))

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        error: type[Exception] | None = None
        if key not in self.model:
            error = NotFound
        elif any(e.parent == key for e in self.model.values()):
            error = FailedPrecondition
        self.expect(error, lambda tx: remove(tx, key))
        if error is None:
            del self.model[key]

    @rule(key=KEYS, labels=LABELS, paths=PATHS)
    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> None:
        error: type[Exception] | None = None
        if "parent" in paths:
            error = InvalidArgument
        elif key not in self.model:
            error = NotFound
        now = self.tick()
        self.expect(error, lambda tx: update_info(tx, key, labels, paths, now))
        if error is None:
            entry = self.model[key]
            if not paths or "labels" in paths:
                entry.labels = clean(labels)
            for path in paths:
                if path.startswith("labels."):
                    name = path.removeprefix("labels.")
                    if labels.get(name):
                        entry.labels[name] = labels[name]
                    else:
                        entry.labels.pop(name, None)

    @invariant()
    def contents_agree(self) -> None:
        with self.store.read() as tx:
            infos = walk_rows(tx)
            chains = {i.name: get_snapshot(tx, i.name) for i in infos}
        got = {i.name: Entry(i.kind, i.parent, dict(i.labels)) for i in infos}
        assert got == self.model
        for info in infos:
            ref = chains[info.name]
            expected = chains[info.parent].id if info.parent else None
            assert (ref.parent_ids[0] if ref.parent_ids else None) == expected


MetastoreModel.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestMetastoreModel = MetastoreModel.TestCase
