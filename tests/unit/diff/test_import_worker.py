"""The import worker process: outcome, errors, cancellation and a worker that dies.

Real worker processes (``forkserver``), real generated gzip layers, real CIM directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap import errdefs
from cimsnap.cim.writer import CimWriter
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.diff.import_worker import Imported, ImportJob, ImportWorker
from cimsnap.diff.worker import WORKER_NICE, WORKER_OOM_SCORE_ADJ

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def big_layer(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLayer:
    [layer] = generate_chain(
        tmp_path_factory.mktemp("gen"),
        layers=1,
        seed=71,
        compress=True,
        size=48 * 2**20,
        entries=1500,
    )
    return layer


@pytest.fixture(scope="module")
def small_layer(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLayer:
    [layer] = generate_chain(tmp_path_factory.mktemp("gen"), layers=1, seed=72, compress=True)
    return layer


def job_in(tmp_path: Path, busy_timeout: float = 60.0) -> ImportJob:
    (tmp_path / "layer").mkdir()
    (tmp_path / "cims").mkdir()
    return ImportJob(
        subject="layer test",
        layer_path=str(tmp_path / "layer"),
        cim_path=str(tmp_path / "cims" / "1.cim"),
        parent_layer_paths=(),
        parent_cim_paths=(),
        busy_timeout=busy_timeout,
    )


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def run(
    job: ImportJob, data: Iterator[bytes], cancelled: threading.Event | None = None
) -> Imported:
    worker = ImportWorker(job, cancelled or threading.Event())
    try:
        for chunk in data:
            if not worker.feed(chunk):
                break
        return worker.finish()
    finally:
        worker.close()


def test_import_reports_the_uncompressed_digest_and_progress(
    tmp_path: Path, small_layer: GeneratedLayer
) -> None:
    job = job_in(tmp_path)
    seen: list[tuple[int, int]] = []
    worker = ImportWorker(
        job, threading.Event(), lambda done, entries: seen.append((done, entries))
    )
    try:
        for chunk in chunks(small_layer.path):
            assert worker.feed(chunk)
        imported = worker.finish()
    finally:
        worker.close()
    assert imported == Imported(small_layer.diff_id, small_layer.tar_size)
    assert Path(job.cim_path).is_file()
    assert seen and seen[0][1] >= 1  # the first entry is always reported
    assert worker.exitcode == 0


def test_a_corrupt_stream_is_invalid_argument_and_commits_nothing(
    tmp_path: Path, small_layer: GeneratedLayer
) -> None:
    job = job_in(tmp_path)
    data = bytearray(small_layer.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(errdefs.InvalidArgument, match=r"^layer test: .*offset"):
        run(job, iter([bytes(data)]))
    assert list(Path(job.cim_path).parent.iterdir()) == []
    assert list(Path(job.layer_path).iterdir()) == []


def test_a_killed_worker_is_internal_and_the_differ_can_retry(
    tmp_path: Path, big_layer: GeneratedLayer
) -> None:
    job = job_in(tmp_path)
    worker = ImportWorker(job, threading.Event())
    try:
        fed = 0
        for chunk in chunks(big_layer.path):
            assert worker.feed(chunk)
            fed += len(chunk)
            if fed >= big_layer.blob_size // 3:
                break
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(errdefs.Internal, match=r"import worker exited \(code -9\)"):
            while worker.feed(b"\0" * CHUNK):
                pass
            worker.finish()
    finally:
        worker.close()
    assert not Path(job.cim_path).exists()
    # What a killed import leaves is invisible (temporary names) and does not stop the
    # next import of the same layer, once the differ removed the layer directory's files.
    for entry in Path(job.layer_path).iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    imported = run(job, chunks(big_layer.path))
    assert imported.digest == big_layer.diff_id


def test_cancel_while_waiting_for_the_cim_directory(
    tmp_path: Path, small_layer: GeneratedLayer
) -> None:
    job = job_in(tmp_path, busy_timeout=600)
    cancelled = threading.Event()
    holder = CimWriter(Path(job.cim_path).parent, "0.cim")  # another writer has the directory
    try:
        threading.Timer(0.5, cancelled.set).start()
        started = time.monotonic()
        with pytest.raises(errdefs.Canceled, match="cancelled while waiting for the CIM"):
            run(job, chunks(small_layer.path), cancelled)
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert not Path(job.cim_path).exists()


def test_closing_a_worker_that_waits_for_data_stops_it(tmp_path: Path) -> None:
    job = job_in(tmp_path)
    worker = ImportWorker(job, threading.Event())
    assert worker.feed(b"\x1f\x8b")  # a gzip stream that never goes on
    started = time.monotonic()
    worker.close()
    assert time.monotonic() - started < 5
    assert worker.exitcode is not None


def test_the_worker_yields_cpu_and_is_the_oom_killers_first_choice(tmp_path: Path) -> None:
    job = job_in(tmp_path)
    worker = ImportWorker(job, threading.Event())
    try:
        deadline = time.monotonic() + 10
        adj = Path(f"/proc/{worker.pid}/oom_score_adj")
        while adj.read_text().strip() != str(WORKER_OOM_SCORE_ADJ):
            assert time.monotonic() < deadline, adj.read_text()
            time.sleep(0.01)
        assert Path("/proc/self/oom_score_adj").read_text().strip() != str(WORKER_OOM_SCORE_ADJ)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        expected = min(ours + WORKER_NICE, 19)
        while os.getpriority(os.PRIO_PROCESS, worker.pid) != expected:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        worker.close()
