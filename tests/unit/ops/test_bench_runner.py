"""``python -m benchmarks`` (``make bench``): discovery, listing and bad names."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from tests.grpc_harness import REPO_ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_names_every_benchmark_module() -> None:
    out = _run("--list")
    assert out.returncode == 0, out.stderr
    files = sorted(
        p.stem for p in Path(REPO_ROOT, "benchmarks").glob("*.py") if not p.stem.startswith("_")
    )
    assert out.stdout.split() == files
    assert "snapshots_api" in files


def test_every_listed_benchmark_has_a_main() -> None:
    for name in _run("--list").stdout.split():
        module = importlib.import_module(f"benchmarks.{name}")
        assert callable(getattr(module, "main", None)), name


def test_unknown_name_is_a_usage_error_and_runs_nothing() -> None:
    out = _run("cim_build", "no_such_benchmark")
    assert out.returncode == 2
    assert "no_such_benchmark" in out.stderr
    assert "== benchmarks." not in out.stdout
