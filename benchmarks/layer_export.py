"""Benchmark: exporting CIM layers as Windows layer tars versus GNU tar archiving the same tree.

    python -m benchmarks.layer_export [--size 1GiB] [--entries 30000] [--dir PATH] [--repeat R]

Workload: a generated two-layer chain (:mod:`cimsnap.devtools.layergen`, profile "bench":
the base has ``--size`` bytes of file data in ``--entries`` entries, ~9% directories,
~30% hard links, heavy-tailed sizes; the delta about 30% of both), imported with
:func:`cimsnap.wclayer.importer.import_layer` (untimed; its time is printed for reference).

Measured, on the same disk (``--dir``, default a temporary directory under the current one):

* export: ``export_layer`` of each layer into an uncompressed tar file, in a fresh
  process (so its peak RSS is its own), then ``os.sync()``;
* baseline: GNU ``tar -cf`` of exactly the entries of the layer's tar (whiteouts aside,
  ``--no-recursion -T list``) from a plain directory holding the layers up to it, extracted
  beforehand with ``tar -xf`` (untimed), then ``os.sync()``.

Both sides start after an ``os.sync()``.

Each side runs R times (default 2) and the best time is kept. Prints MB/s (of tar bytes),
entries/s, the export/baseline time ratio (< 1 means faster than GNU tar) and the
exporting process's peak RSS. Targets: ratio <= 1.0, peak RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from cimsnap.devtools.layergen import generate_chain, parse_size
from cimsnap.wclayer.importer import import_layer

_EXPORT = """
import os, sys, time
from cimsnap.wclayer.exporter import export_layer
os.sync()
start = time.perf_counter()
with open(sys.argv[3], "wb") as out:
    stats = export_layer(sys.argv[1], sys.argv[2] or None, out)
os.sync()
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: the latter keeps the parent's RSS from before exec.
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(seconds, stats.tar_bytes, stats.entries, hwm // 1024)
"""


def _export(cim: Path, parent: Path | None, out: Path) -> tuple[float, int, int, int]:
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT, str(cim), str(parent or ""), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, size, entries, rss = result.stdout.split()
    out.unlink()
    return float(seconds), int(size), int(entries), int(rss)


def _gnu_tar(tree: Path, names: Path, out: Path) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(
        ["tar", "-cf", str(out), "-C", str(tree), "--no-recursion", "-T", str(names)], check=True
    )
    os.sync()
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layer_export")
    parser.add_argument("--size", type=parse_size, default=1 << 30)
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="layer-export-bench-", dir=args.dir))
    try:
        layers = generate_chain(
            work / "tars",
            layers=2,
            seed=args.seed,
            profile="bench",
            size=args.size,
            entries=args.entries,
        )
        snapshots = work / "snapshots"
        (snapshots / "cim-layers").mkdir(parents=True)
        cims: list[Path] = []
        for layer in layers:
            parents = [snapshots / f"L{i}" for i in range(layer.index - 1, -1, -1)]
            cim = snapshots / "cim-layers" / f"L{layer.index}.cim"
            start = time.perf_counter()
            with layer.path.open("rb") as f:
                import_layer(
                    f,
                    snapshots / f"L{layer.index}",
                    cim,
                    parents,
                    [snapshots / "cim-layers" / f"{p.name}.cim" for p in parents],
                )
            print(
                f"import layer {layer.index}: {layer.entries} entries, "
                f"{layer.tar_size / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s"
            )
            cims.append(cim)
        tree = work / "tree"
        tree.mkdir()
        for layer, cim in zip(layers, cims, strict=True):
            # The baseline archives exactly this layer's entries (whiteouts aside) from a
            # directory holding the layers up to it, extracted untimed.
            subprocess.run(
                ["tar", "--warning=none", "-xf", str(layer.path), "-C", str(tree)], check=True
            )
            with tarfile.open(layer.path) as tar:
                wanted = [n for n in tar.getnames() if not n.rpartition("/")[2].startswith(".wh.")]
            names = work / "names.txt"
            names.write_text("".join(f"{n}\n" for n in wanted))
            parent = cims[layer.index - 1] if layer.index else None
            out = work / "out.tar"
            exports = [_export(cim, parent, out) for _ in range(args.repeat)]
            seconds, size, entries, rss = min(exports)
            baseline = min(_gnu_tar(tree, names, out) for _ in range(args.repeat))
            kind = "base" if layer.index == 0 else "delta"
            print(
                f"{kind} layer: export {seconds:.2f} s ({size / seconds / 1e6:.0f} MB/s, "
                f"{entries / seconds:.0f} entries/s, {entries} entries, {size / 1e6:.0f} MB), "
                f"GNU tar -c {baseline:.2f} s ({size / baseline / 1e6:.0f} MB/s); "
                f"ratio {seconds / baseline:.2f}; export peak RSS {rss} MB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
