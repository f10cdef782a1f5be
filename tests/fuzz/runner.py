"""Run a fuzz target under atheris in a subprocess, for CI and the reliability benchmark."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["CORPUS", "atheris_available", "run_atheris"]

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


def atheris_available() -> bool:
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


def run_atheris(target: str, seconds: float, scratch: Path) -> tuple[int, int, str]:
    """Fuzz ``target`` for ``seconds``; return (exit code, executions, libFuzzer's output)."""
    scratch.mkdir(parents=True, exist_ok=True)
    artifacts = scratch / "artifacts"
    artifacts.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_run",
        target,
        str(scratch),
        str(CORPUS / target),
        f"-max_total_time={max(1, round(seconds))}",
        "-rss_limit_mb=2048",
        "-timeout=30",  # one input running longer than this is a finding too
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=seconds + 180
    )
    found = _EXECUTED.findall(done.stderr)
    return done.returncode, int(found[-1]) if found else 0, done.stderr
