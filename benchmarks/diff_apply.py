"""Benchmark: Diff.Apply of a gzip layer through containerd versus a local import.

    python -m benchmarks.diff_apply [--size 1GiB] [--entries 30000] [--dir PATH] [--runs 3]

Workload: one generated Windows base layer (layergen's ``bench`` profile: ``--size`` bytes
of file data, ``--entries`` entries), gzip-compressed. Measured in one run, each on a
fresh cimsnap root:

* **local** (the baseline): what ``cimsnap layer import`` does with the ``.tar.gz``
  file - open it, decompress by magic bytes, ``import_layer`` into a new CIM - in a
  separate Python process, timed around those calls after a warm-up import of a tiny
  layer (the server is warm too from the second round on).
* **grpc**: the full Apply path. The blob is put into a private containerd's content store
  (Debian's containerd on a private root); a real ``cimsnap serve`` process, configured with
  that containerd's address, gets one ``Diff/Apply`` for an extract snapshot's CimFS mount -
  exactly the call containerd's diff service makes - and streams the blob through
  containerd's Content service, decompresses it, imports it and hashes it.
* **content-dir**: the same Apply with ``containerd_content_dir`` set (the blob is read
  from containerd's content directory on disk, digest verified).

Each round runs the three in turn; the best of ``--runs`` rounds (default 3) is reported,
because other load on the machine only ever adds time. Prints wall time, MB/s of
uncompressed tar and of compressed blob, peak RSS (the local import's process; for the
two Apply paths the server's, which since imports run in a worker process of their own
shows the relaying daemon, not the import), the ratio grpc/local (target <= 1.15) and
content-dir/local; fails if a diff ID differs from the generator's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.devtools.layergen import generate_chain, parse_size
from cimsnap.diff.containerd import Containerd, grpc_target
from cimsnap.diff.mediatypes import OCI_LAYER_GZIP, Descriptor

LEASE = "cimsnap-bench"


def vm_hwm_kib(pid: str) -> int:
    """Peak RSS of process ``pid`` ("self" for this one) from /proc (ru_maxrss after
    fork/exec can report the parent's peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def local_import(blob: Path, root: Path) -> None:
    """Child mode: the baseline import; prints JSON (seconds, maxrss KiB, size)."""
    from cimsnap.wclayer.compression import open_decompressed
    from cimsnap.wclayer.importer import import_layer

    cims = root / "cim-layers"
    cims.mkdir(parents=True)
    # Warm up (lazy imports and tables), as the long-running server is in later rounds.
    [tiny] = generate_chain(root / "warm", layers=1, seed=1, compress=True)
    with tiny.path.open("rb") as raw, open_decompressed(raw) as tar:
        import_layer(tar, root / "warm-layer", cims / "0.cim", [], [])
    layer = root / "layer"
    layer.mkdir()
    started = time.perf_counter()
    with blob.open("rb") as raw, open_decompressed(raw) as tar:
        size = import_layer(tar, layer, cims / "1.cim", [], [])
    seconds = time.perf_counter() - started
    rss = vm_hwm_kib("self")
    print(json.dumps({"seconds": seconds, "rss_kib": rss, "size": size}))


def run_local(blob: Path, root: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.diff_apply", "--local-import", str(blob), str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Serve:
    """A ``cimsnap serve`` process (its own interpreter, as in production)."""

    def __init__(self, base: Path, name: str, containerd: str, content_dir: str) -> None:
        self.address = str(base / f"{name}.sock")
        config = base / f"{name}.toml"
        config.write_text(
            f'address = "{self.address}"\nroot = "{base / name}"\nlog_level = "warning"\n'
            f'containerd_address = "{containerd}"\ncontainerd_content_dir = "{content_dir}"\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cimsnap", "serve", "--config", str(config)]
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with grpc.insecure_channel(grpc_target(self.address)) as channel:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                return
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("cimsnap serve did not start") from None
                time.sleep(0.05)

    def rss_kib(self) -> int:
        return vm_hwm_kib(str(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def start_containerd(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    base.mkdir(parents=True)
    socket = base / "containerd.sock"
    config = base / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
    )
    log = (base / "containerd.log").open("wb")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while subprocess.run(
        ["ctr", "--address", str(socket), "version"], capture_output=True
    ).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("containerd did not start")
        time.sleep(0.05)
    return proc, str(socket)


def put_blob(address: str, blob: Path) -> Descriptor:
    digest = hashlib.sha256()
    with blob.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    size = blob.stat().st_size
    name = "sha256:" + digest.hexdigest()

    def chunks():  # type: ignore[no-untyped-def]
        with blob.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    with Containerd(address, "default", timeout=3600) as ctd:
        ctd.create_lease(LEASE, "2999-01-01T00:00:00Z")
        ctd.lease = LEASE
        ctd.write_content("bench-layer", chunks(), lambda: (name, size))
    return Descriptor(OCI_LAYER_GZIP, name, size)


def run_apply(serve: Serve, desc: Descriptor, key: str) -> tuple[float, Descriptor]:
    with SnapshotsClient(serve.address) as sn:
        mounts = sn.prepare(f"default/{key}/extract-{key} sha256:bench")
    with Containerd(serve.address, "default", timeout=3600) as differ:
        started = time.perf_counter()
        applied = differ.apply(desc, mounts)
        return time.perf_counter() - started, applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file data of the layer (default 1GiB)")
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument("--runs", type=int, default=3, help="rounds; the best of each is shown")
    parser.add_argument("--local-import", nargs=2, metavar=("BLOB", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_import:
        local_import(Path(args.local_import[0]), Path(args.local_import[1]))
        return 0
    if shutil.which("containerd") is None:
        raise SystemExit("containerd is needed (make system-deps)")
    base = Path(tempfile.mkdtemp(prefix="cs-bench-", dir=args.dir))
    containerd = None
    try:
        started = time.perf_counter()
        [layer] = generate_chain(
            base / "layer",
            layers=1,
            profile="bench",
            size=parse_size(args.size),
            entries=args.entries,
            compress=True,
        )
        print(
            f"layer: {layer.entries} entries, tar {layer.tar_size / 1e6:.0f} MB, gzip "
            f"{layer.blob_size / 1e6:.0f} MB (generated in {time.perf_counter() - started:.0f} s)"
        )
        containerd, address = start_containerd(base / "ctd")
        desc = put_blob(address, layer.path)
        content_dir = base / "ctd" / "root" / "io.containerd.content.v1.content"
        serves = {
            "grpc": Serve(base, "grpc", address, ""),
            "content-dir": Serve(base, "content-dir", address, str(content_dir)),
        }
        best: dict[str, tuple[float, int, str]] = {}
        try:
            for n in range(args.runs):
                local_root = base / f"local-{n}"
                local = run_local(layer.path, local_root)
                shutil.rmtree(local_root)
                samples = {"local": (local["seconds"], int(local["rss_kib"]), layer.diff_id)}
                for name, serve in serves.items():
                    seconds, applied = run_apply(serve, desc, n + 1)
                    samples[name] = (seconds, serve.rss_kib(), applied.digest)
                print("run", n + 1, " ".join(f"{k} {v[0]:.2f} s" for k, v in samples.items()))
                for name, sample in samples.items():
                    if name not in best or sample[0] < best[name][0]:
                        best[name] = sample
        finally:
            for serve in serves.values():
                serve.stop()
        results = best
        print(
            f"{'path':<12} {'seconds':>8} {'tar MB/s':>9} {'gzip MB/s':>10} "
            f"{'RSS MiB':>8} {'vs local':>9}"
        )
        for name, (seconds, rss, _) in results.items():
            ratio = seconds / results["local"][0]
            print(
                f"{name:<12} {seconds:>8.2f} {layer.tar_size / 1e6 / seconds:>9.1f} "
                f"{layer.blob_size / 1e6 / seconds:>10.1f} {rss / 1024:>8.0f} {ratio:>9.3f}"
            )
        grpc_ratio = results["grpc"][0] / results["local"][0]
        fast_gain = results["grpc"][0] / results["content-dir"][0]
        print(
            f"grpc/local ratio {grpc_ratio:.3f} (target <= 1.15): "
            + ("met" if grpc_ratio <= 1.15 else "NOT met")
        )
        print(f"content-dir fast path: {fast_gain:.3f}x the gRPC path's speed")
        for name, (_, _, digest) in results.items():
            if digest != layer.diff_id:
                raise SystemExit(f"{name}: diff ID {digest} != {layer.diff_id}")
        return 0
    finally:
        if containerd is not None:
            containerd.send_signal(signal.SIGTERM)
            containerd.wait(30)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
