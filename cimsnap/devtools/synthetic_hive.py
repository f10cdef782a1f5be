r"""Synthetic SOFTWARE-like hives and differencing deltas, for benchmarks and scale tests.

:func:`software_base` builds a normal hive shaped like a Windows SOFTWARE hive (see
the Windows layer format): a wide ``Classes\CLSID`` / ``Interface`` / ProgID section,
a 32-bit ``WOW6432Node`` mirror, Component Based Servicing packages with many values,
SideBySide winners, Installer components, plus deep vendor trees, and
``Microsoft\Windows NT\CurrentVersion`` with ``CurrentBuild``. Values mix REG_SZ paths,
REG_EXPAND_SZ, REG_DWORD, REG_QWORD, REG_MULTI_SZ, REG_BINARY, and a few values above the
16,344-byte db threshold. ``scale=1.0`` gives about 360k keys and 570k values, ~100 MB as
regf; the output is deterministic for a given ``seed``.

:func:`software_delta` builds a differencing hive over such a base, shaped like the real
deltas of §4.3: pass-through ancestors (merge + InheritClass), value edits and value
tombstones on existing keys, key tombstones, SupersedeLocal packages, SupersedeTree
replacements (every descendant 3) and new subtrees. ``DeltaPlan`` records what it did so
tests can check the merge outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_NONE,
    REG_QWORD,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
)
from cimsnap.hive.writer import DEFAULT_SECURITY_DESCRIPTOR

__all__ = ["DeltaPlan", "count_keys", "software_base", "software_delta"]

_WORDS = (
    "Microsoft",
    "Windows",
    "Shell",
    "Explorer",
    "Search",
    "Media",
    "Network",
    "Print",
    "Update",
    "Defender",
    "Security",
    "Storage",
    "Audio",
    "Video",
    "Graphics",
    "Input",
    "Speech",
    "Office",
    "Runtime",
    "Framework",
    "Policy",
    "Service",
    "Driver",
    "Telemetry",
    "Cloud",
    "Sync",
    "Identity",
    "Crypto",
    "Provider",
    "Handler",
    "Extension",
    "Cache",
    "Profile",
    "Device",
)
# Two valid self-relative SDs: the writer's default, and one granting Users KEY_WRITE too.
_SD_ADMIN = DEFAULT_SECURITY_DESCRIPTOR
_SD_USERS = DEFAULT_SECURITY_DESCRIPTOR.replace(
    bytes.fromhex("19000200"), bytes.fromhex("1f000200"), 1
)
_CURRENT_BUILD = "20348"


def _sz(name: str, text: str, vtype: int = REG_SZ) -> Value:
    return Value(name, vtype, (text + "\0").encode("utf-16-le"))


def _dword(name: str, n: int) -> Value:
    return Value(name, REG_DWORD, (n & 0xFFFFFFFF).to_bytes(4, "little"))


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.time = 132_000_000_000_000_000

    def guid(self) -> str:
        r = self.rng.getrandbits(128)
        h = f"{r:032X}"
        return f"{{{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}}}"

    def word(self) -> str:
        return self.rng.choice(_WORDS)

    def path(self) -> str:
        parts = [self.word() for _ in range(self.rng.randint(1, 3))]
        dll = self.word().lower() + self.rng.choice(("", "svc", "core", "host", "api"))
        return "%SystemRoot%\\System32\\" + "\\".join(parts) + f"\\{dll}.dll"

    def key(self, name: str) -> Key:
        self.time += self.rng.randint(1, 10_000_000)
        sd = _SD_ADMIN if self.rng.random() < 0.8 else _SD_USERS
        return Key(name, last_written=self.time, security=sd)

    def values(self, n: int) -> list[Value]:
        rng = self.rng
        out: list[Value] = []
        for i in range(n):
            roll = rng.random()
            name = f"{self.word()}{i}" if i else ""
            if roll < 0.40:
                out.append(_sz(name, self.path()))
            elif roll < 0.50:
                out.append(_sz(name, self.path(), REG_EXPAND_SZ))
            elif roll < 0.80:
                out.append(_dword(name, rng.getrandbits(32)))
            elif roll < 0.85:
                out.append(Value(name, REG_QWORD, rng.getrandbits(64).to_bytes(8, "little")))
            elif roll < 0.92:
                words = "\0".join(self.word() for _ in range(rng.randint(1, 6)))
                out.append(Value(name, REG_MULTI_SZ, (words + "\0\0").encode("utf-16-le")))
            else:
                size = rng.choice((16, 24, 40, 120, 400))
                out.append(Value(name, REG_BINARY, rng.randbytes(size)))
        return out


def software_base(scale: float = 1.0, seed: int = 1) -> Hive:
    """Return a normal SOFTWARE-like hive; ``scale=1.0`` is about 100 MB (see above)."""
    g = _Gen(seed)

    def n(count: int) -> int:
        return max(1, int(count * scale))

    root = Key("ROOT", security=_SD_ADMIN)
    classes = root.add_subkey(g.key("Classes"))
    _com_section(g, classes, n(39_000), n(26_000), n(13_000))
    wow = root.add_subkey(g.key("WOW6432Node")).add_subkey(g.key("Classes"))
    _com_section(g, wow, n(19_500), n(6_500), n(3_200))
    ms = root.add_subkey(g.key("Microsoft"))
    nt = ms.add_subkey(g.key("Windows NT")).add_subkey(g.key("CurrentVersion"))
    nt.values = [
        _sz("CurrentBuild", _CURRENT_BUILD),
        _sz("CurrentBuildNumber", _CURRENT_BUILD),
        _sz("ProductName", "Windows Server 2022 Datacenter"),
        _dword("CurrentMajorVersionNumber", 10),
    ]
    cv = ms.add_subkey(g.key("Windows")).add_subkey(g.key("CurrentVersion"))
    cbs = cv.add_subkey(g.key("Component Based Servicing")).add_subkey(g.key("Packages"))
    for i in range(n(9_800)):
        pkg = cbs.add_subkey(
            g.key(f"Package_{i}_for_KB{5000000 + i}~31bf3856ad364e35~amd64~~10.0.1.{i % 97}")
        )
        pkg.values = g.values(8)
        pkg.add_subkey(g.key("Owners")).values = g.values(2)
    winners = cv.add_subkey(g.key("SideBySide")).add_subkey(g.key("Winners"))
    for i in range(n(13_000)):
        w = winners.add_subkey(
            g.key(f"amd64_microsoft-windows-{g.word().lower()}-{i}_31bf3856ad364e35_none_{i:016x}")
        )
        w.values = [_sz("", "10.0")]
        w.add_subkey(g.key("10.0")).values = g.values(2)
    components = cv.add_subkey(g.key("Installer")).add_subkey(g.key("UserData"))
    components = components.add_subkey(g.key("S-1-5-18")).add_subkey(g.key("Components"))
    for i in range(n(39_000)):
        components.add_subkey(g.key(f"{i:08X}{g.rng.getrandbits(96):024X}")).values = g.values(2)
    vendors = root.add_subkey(g.key("Vendors"))
    for i in range(n(3_900)):
        _deep(g, vendors.add_subkey(g.key(f"Vendor{i}")), g.rng.randint(2, 8))
    big = root.add_subkey(g.key("BigData"))
    big.values = [
        Value(f"Blob{i}", REG_BINARY, g.rng.randbytes(20_000 + 7_000 * i)) for i in range(5)
    ]
    return Hive(root=root, minor_version=5, file_name="SOFTWARE", last_written=g.time)


def _com_section(g: _Gen, classes: Key, clsids: int, interfaces: int, progids: int) -> None:
    clsid = classes.add_subkey(g.key("CLSID"))
    for _ in range(clsids):
        c = clsid.add_subkey(g.key(g.guid()))
        c.values = [_sz("", f"{g.word()} {g.word()} Class")]
        ips = c.add_subkey(g.key("InprocServer32"))
        ips.values = [_sz("", g.path(), REG_EXPAND_SZ), _sz("ThreadingModel", "Both")]
    iface = classes.add_subkey(g.key("Interface"))
    for _ in range(interfaces):
        i = iface.add_subkey(g.key(g.guid()))
        i.values = [_sz("", f"I{g.word()}{g.word()}")]
        i.add_subkey(g.key("ProxyStubClsid32")).values = [_sz("", g.guid())]
        i.add_subkey(g.key("NumMethods")).values = [_sz("", str(g.rng.randint(3, 40)))]
    for k in range(progids):
        p = classes.add_subkey(g.key(f"{g.word()}.{g.word()}{k}.1"))
        p.values = [_sz("", f"{g.word()} Object")]
        p.add_subkey(g.key("CLSID")).values = [_sz("", g.guid())]


def _deep(g: _Gen, key: Key, depth: int) -> None:
    node = key
    for level in range(depth):
        node.values = g.values(g.rng.randint(0, 3))
        node = node.add_subkey(g.key(f"{g.word()}{level}"))
        if g.rng.random() < 0.3:
            node.add_subkey(g.key("Settings")).values = g.values(3)


def count_keys(root: Key) -> int:
    """Return the number of keys under and including ``root`` (iteratively)."""
    count, stack = 0, [root]
    while stack:
        key = stack.pop()
        count += 1
        stack.extend(key.subkeys.values())
    return count


@dataclass
class DeltaPlan:
    """What :func:`software_delta` did, by ``\\``-joined base-key path."""

    tombstoned: list[str] = field(default_factory=list)
    superseded_tree: list[str] = field(default_factory=list)
    superseded_local: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    value_tombstones: list[tuple[str, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def software_delta(base: Hive, scale: float = 1.0, seed: int = 2) -> tuple[Hive, DeltaPlan]:
    """Return a differencing hive over ``base`` (about 2 MB at ``scale=1.0``) and its plan.

    ``base`` must come from :func:`software_base`; it is not modified.
    """
    g = _Gen(seed)
    plan = DeltaPlan()
    root = Key("ROOT", inherit_class=True, security=_SD_ADMIN)

    def n(count: int) -> int:
        return max(1, int(count * scale))

    def along(path: list[str]) -> Key:
        """The delta node at ``path``, creating pass-through ancestors (sem 0 + inherit)."""
        node = root
        for part in path:
            child = node.subkey(part)
            if child is None:
                child = node.add_subkey(
                    Key(
                        part.upper() if g.rng.random() < 0.1 else part,
                        inherit_class=True,
                        last_written=g.time,
                        security=_SD_ADMIN,
                    )
                )
            node = child
        return node

    def pick(path: list[str], count: int) -> list[str]:
        shown = "\\".join(path)
        node = base.root.find(shown)
        if node is None:
            raise ValueError(f"base has no {shown!r}; use software_base()")
        names = sorted(k.name for k in node.subkeys.values())
        return g.rng.sample(names, min(count, len(names)))

    clsid_path = ["Classes", "CLSID"]
    chosen = pick(clsid_path, n(3_500))
    for name in chosen[: n(2_000)]:  # edits: a changed server path, a new value, a tombstone
        ips = along([*clsid_path, name, "InprocServer32"])
        ips.values = [
            _sz("", g.path(), REG_EXPAND_SZ),
            _sz("Added", "yes"),
            Value("ThreadingModel", REG_NONE, b"", tombstone=True),
        ]
        plan.edited.append("\\".join([*clsid_path, name, "InprocServer32"]))
        plan.value_tombstones.append(
            ("\\".join([*clsid_path, name, "InprocServer32"]), "ThreadingModel")
        )
    for name in chosen[n(2_000) : n(2_400)]:  # key tombstones
        along(clsid_path).add_subkey(Key(name, semantics=LayerSemantics.TOMBSTONE))
        plan.tombstoned.append("\\".join([*clsid_path, name]))
    iface_path = ["Classes", "Interface"]
    for name in pick(iface_path, n(300)):  # SupersedeTree: whole subtree replaced
        tree = along(iface_path).add_subkey(
            Key(
                name,
                semantics=LayerSemantics.SUPERSEDE_TREE,
                inherit_class=True,
                last_written=g.time,
                security=_SD_ADMIN,
            )
        )
        tree.values = [_sz("", "IReplaced")]
        tree.add_subkey(Key("ProxyStubClsid32", semantics=LayerSemantics.SUPERSEDE_TREE)).values = [
            _sz("", g.guid())
        ]
        plan.superseded_tree.append("\\".join([*iface_path, name]))
    cbs_path = ["Microsoft", "Windows", "CurrentVersion", "Component Based Servicing", "Packages"]
    for name in pick(cbs_path, n(400)):  # SupersedeLocal: values replaced, children merge
        pkg = along([*cbs_path, name])
        pkg.semantics = LayerSemantics.SUPERSEDE_LOCAL
        pkg.values = g.values(6)
        pkg.add_subkey(Key("Updates", last_written=g.time)).values = g.values(2)
        plan.superseded_local.append("\\".join([*cbs_path, name]))
    packages = along(cbs_path)
    for i in range(n(600)):  # new packages
        name = f"Package_new_{i}~31bf3856ad364e35~amd64~~10.0.2.{i}"
        pkg = packages.add_subkey(g.key(name))
        pkg.values = g.values(6)
        pkg.add_subkey(g.key("Owners")).values = g.values(1)
        plan.added.append("\\".join([*cbs_path, name]))
    nt = along(["Microsoft", "Windows NT", "CurrentVersion"])
    nt.values = [_sz("UBR", "1.0"), Value("ProductName", REG_NONE, b"", tombstone=True)]
    plan.value_tombstones.append(("Microsoft\\Windows NT\\CurrentVersion", "ProductName"))
    return Hive(
        root=root, minor_version=6, flags=0x2, file_name="Software_Delta", last_written=g.time
    ), plan
