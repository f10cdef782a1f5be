"""The Dockerfile, checked statically (no container engine in CI): stages, pinned base,
non-root user, health check, entry point, volumes, and what .dockerignore lets through."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

from cimsnap.cli import build_parser
from cimsnap.daemon.config import Config
from tests.grpc_harness import REPO_ROOT


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return result


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )


def base_image(from_args: str) -> str:
    image = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args()[m.group(1)], image)


def test_multi_stage_build_then_slim_pinned_python_runtime() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    build, runtime = all_stages[0], all_stages[-1]
    assert any(w == "RUN" and "pip wheel" in r for w, r in build)
    for stage in all_stages:
        image = base_image(stage[0][1])
        # A full version and a Debian release: python:3.11.N-slim-<codename>.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", image), image
    runs = " ".join(r for w, r in runtime if w == "RUN")
    assert "--no-index" in runs and "from=build" in runs  # installs only the built wheels


def test_runtime_defaults() -> None:
    runtime = dict(stages()[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == ["cimsnap", "serve"]
    user = runtime["USER"]
    assert user not in {"root", "0"} and not user.startswith("0:")
    volumes = set(json.loads(runtime["VOLUME"]))
    default = Config()
    assert volumes == {default.root, str(Path(default.address).parent)}
    health = runtime["HEALTHCHECK"]
    command = json.loads(health.split("CMD", 1)[1])
    assert command[:2] == ["cimsnap", "health"]
    # The health command and its flags exist.
    parsed = build_parser().parse_args(command[1:])
    assert parsed.command == "health" and parsed.timeout > 0
    timeout = re.search(r"--timeout=(\d+)s", health)
    assert timeout and int(timeout.group(1)) > parsed.timeout  # the probe ends first


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for these simple patterns: a pattern matches the path or one of its
    parent directories (``**/x`` any component); the last matching pattern wins."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.removeprefix("!")
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, p[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, p) for prefix in prefixes)
        if hit:
            result = not negate
    return result


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for word, rest in instructions()
        if word == "COPY" and "--from" not in rest
        for src in shlex.split(rest)[:-1]
    ]
    assert copied, "no COPY"
    for src in copied:
        assert (REPO_ROOT / src).exists(), src
        assert not ignored(src, patterns), src
    assert not ignored("cimsnap/data/upcase-delta.bin.gz", patterns)
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "cimsnap/__pycache__/cli.cpython-311.pyc",
    ):
        assert ignored(dropped, patterns), dropped
