"""Validation of snapshot keys and labels (containerd ``pkg/labels``), before any change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cimsnap.errdefs import InvalidArgument

__all__ = ["MAX_LABEL_SIZE", "checked_key", "checked_labels"]

#: Largest key + value of one label in UTF-8 bytes (containerd ``labels.Validate``, and the
#: limit stated in the snapshots proto). There is no limit on the number of labels.
MAX_LABEL_SIZE: Final = 4096


def checked_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Return a copy of ``labels``; InvalidArgument if a key + value exceeds the limit."""
    checked = dict(labels or {})
    for key, value in checked.items():
        size = len(key.encode("utf-8", "surrogatepass")) + len(
            value.encode("utf-8", "surrogatepass")
        )
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size "
                f"({MAX_LABEL_SIZE} bytes), key: {key[:10]}: invalid argument"
            )
    return checked


def checked_key(what: str, key: str) -> None:
    """InvalidArgument if ``key`` (a snapshot key or name) is empty.

    [choice] containerd's metadata layer never forwards an empty key; an empty key would
    also be indistinguishable from "no parent", so it is refused.
    """
    if not key:
        raise InvalidArgument(f"{what} must not be empty: invalid argument")
