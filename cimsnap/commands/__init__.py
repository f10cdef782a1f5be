"""Command groups of the ``cimsnap`` CLI; see ``cimsnap.cli``."""

from __future__ import annotations

import sys

__all__ = ["failed"]


def failed(message: str) -> int:
    """Print ``cimsnap: message`` on stderr; return exit status 1 (for ``return failed(...)``)."""
    print(f"cimsnap: {message}", file=sys.stderr)
    return 1
