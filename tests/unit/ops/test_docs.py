"""The project's own documentation: self-contained, links that resolve, a current reference."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cimsnap.devtools import genconfigdoc
from tests.grpc_harness import REPO_ROOT

# Built from pieces so that this file does not match itself. The last three are the team's
# own specification files, which live outside the repository: users have docs/ instead.
OUTSIDE_PATHS = (
    "../" + "shared",
    "shared" + "/docs",
    "/" + "work/",
    "cim-" + "format.md",
    "windows-layer-" + "import",
    "containerd-" + "integration",
)
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".service", ".proto", ".sh", ".cfg", ".go", ""}


def project_files() -> list[Path]:
    files = []
    for top, dirs, names in os.walk(REPO_ROOT):
        # Caches and tool state (.hypothesis, .venv, ...) are not project files; .ci is.
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and (not d.startswith(".") or d == ".ci")
        ]
        for name in names:
            if name == ".git":  # a worktree's pointer to its repository, not project text
                continue
            path = Path(top, name)
            if path.suffix in TEXT_SUFFIXES or name in {"Dockerfile", ".dockerignore", "Makefile"}:
                files.append(path)
    return files


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    offenders = []
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(p in line for p in OUTSIDE_PATHS):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def markdown_files() -> list[Path]:
    return [
        REPO_ROOT / "README.md",
        *sorted((REPO_ROOT / "docs").glob("*.md")),
        *sorted((REPO_ROOT / "deploy").glob("*.md")),
    ]


def test_relative_links_resolve() -> None:
    broken = []
    for doc in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{doc.relative_to(REPO_ROOT)}: {target}")
    assert not broken, broken


def test_docs_exist_and_readme_links_each() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for name in (
        "architecture",
        "on-disk-layout",
        "format-choices",
        "configuration",
        "containerd",
        "troubleshooting",
    ):
        assert (REPO_ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"](docs/{name}.md)" in readme, name


def test_configuration_reference_is_current() -> None:
    text = genconfigdoc.DOCUMENT.read_text()
    assert genconfigdoc.updated(text) == text, (
        "docs/configuration.md is stale: run python -m cimsnap.devtools.genconfigdoc"
    )
    assert genconfigdoc.main(["--check"]) == 0


def test_readme_quick_start_comes_first_and_its_targets_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[0] == "Quick start"
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make serve" in quick and "make test" in quick
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("serve", "test", "bench"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
