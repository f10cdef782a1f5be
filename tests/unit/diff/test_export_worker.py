"""The export worker process: the blob it streams, its failures, and a worker that dies.

Real worker processes (``forkserver``), CIMs imported from real generated layers.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import threading
from pathlib import Path

import pytest

from cimsnap import errdefs
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.diff.export_worker import ExportJob, ExportWorker
from cimsnap.wclayer.importer import import_layer


@pytest.fixture(scope="module")
def base_cim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GeneratedLayer]:
    base = tmp_path_factory.mktemp("cims")
    [layer] = generate_chain(base / "gen", layers=1, seed=81, size=24 * 2**20, entries=800)
    (base / "layer").mkdir()
    (base / "cims").mkdir()
    cim = base / "cims" / "1.cim"
    with layer.path.open("rb") as tar:
        import_layer(tar, base / "layer", cim, [], [])
    return cim, layer


def job_for(cim: Path) -> ExportJob:
    return ExportJob("export test", str(cim), None, "gzip", None)


def test_export_streams_the_gzip_blob_and_its_digests(
    base_cim: tuple[Path, GeneratedLayer],
) -> None:
    cim, _ = base_cim
    worker = ExportWorker(job_for(cim), threading.Event())
    try:
        blob = b"".join(worker.chunks())
        result = worker.result()
    finally:
        worker.close()
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.size == len(blob)
    tar = gzip.decompress(blob)
    assert result.uncompressed_digest == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.uncompressed_size == len(tar)
    assert worker.exitcode == 0


def test_an_unreadable_image_is_invalid_argument_naming_the_offset(tmp_path: Path) -> None:
    bad = tmp_path / "1.cim"
    bad.write_bytes(b"not a cim" * 100)
    worker = ExportWorker(job_for(bad), threading.Event())
    try:
        with pytest.raises(errdefs.InvalidArgument, match=r"export test: .*offset 0x0"):
            list(worker.chunks())
    finally:
        worker.close()


def test_a_killed_worker_is_internal(base_cim: tuple[Path, GeneratedLayer]) -> None:
    cim, _ = base_cim
    worker = ExportWorker(job_for(cim), threading.Event())
    try:
        chunks = worker.chunks()
        next(chunks)
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(errdefs.Internal, match=r"export worker exited \(code -9\)"):
            list(chunks)
    finally:
        worker.close()


def test_cancel_stops_the_export(base_cim: tuple[Path, GeneratedLayer]) -> None:
    cim, _ = base_cim
    cancelled = threading.Event()
    worker = ExportWorker(job_for(cim), cancelled)
    try:
        chunks = worker.chunks()
        next(chunks)
        cancelled.set()
        with pytest.raises(errdefs.Canceled, match="export test"):
            list(chunks)
    finally:
        worker.close()
