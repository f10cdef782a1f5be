"""Validation of snapshot keys and labels (containerd ``pkg/labels``), before any change.

The limits (all documented in ``docs/limits.md``):

* one label: key + value at most :data:`MAX_LABEL_SIZE` UTF-8 bytes (containerd's own rule);
* [choice] one snapshot: at most :data:`MAX_LABEL_COUNT` labels and :data:`MAX_LABELS_SIZE`
  UTF-8 bytes of keys + values in all. containerd sets no such limit; cimsnap does so that
  every Stat and List answer fits a gRPC message, and one snapshot cannot make every List
  (containerd's garbage collector) slow or fail. containerd's own snapshots carry a handful;
* [choice] an Update mask: at most :data:`MAX_UPDATE_PATHS` paths (each ``labels.<k>``
  path is one statement under the metastore's write lock; 100,000 of them held it for
  0.6 s);
* [choice] a snapshot key or name: at most :data:`MAX_KEY_SIZE` UTF-8 bytes (containerd's
  bolt metadata store cannot hold keys above 32 KiB; real keys are under 300 bytes), and no
  C0 control character (U+0000-U+001F) or DEL: they have no use in a key and would let a
  client forge log lines. A lone surrogate (impossible over gRPC) is refused too.

Violations raise InvalidArgument naming the limit; nothing has changed at that point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from cimsnap.errdefs import InvalidArgument

__all__ = [
    "MAX_KEY_SIZE",
    "MAX_LABELS_SIZE",
    "MAX_LABEL_COUNT",
    "MAX_LABEL_SIZE",
    "MAX_UPDATE_PATHS",
    "checked_key",
    "checked_label_set",
    "checked_labels",
    "checked_update_paths",
]

#: Largest key + value of one label in UTF-8 bytes (containerd ``labels.Validate``, and the
#: limit stated in the snapshots proto).
MAX_LABEL_SIZE: Final = 4096
#: Most labels one snapshot may carry.
MAX_LABEL_COUNT: Final = 512
#: Most UTF-8 bytes of label keys + values one snapshot may carry.
MAX_LABELS_SIZE: Final = 64 * 1024
#: Longest snapshot key or name in UTF-8 bytes.
MAX_KEY_SIZE: Final = 4096
#: Most field paths in one Update's mask: one per label a snapshot may carry, plus "labels".
MAX_UPDATE_PATHS: Final = MAX_LABEL_COUNT + 1

_FORBIDDEN_KEY_CHARS: Final = frozenset(map(chr, [*range(0x20), 0x7F]))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def checked_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Return a copy of ``labels``; InvalidArgument if one label, or all, exceed a limit."""
    checked = dict(labels or {})
    if len(checked) > MAX_LABEL_COUNT:
        raise InvalidArgument(
            f"{len(checked)} labels, more than the maximum of {MAX_LABEL_COUNT}: invalid argument"
        )
    total = 0
    for key, value in checked.items():
        size = _utf8_size(key) + _utf8_size(value)
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size "
                f"({MAX_LABEL_SIZE} bytes), key: {key[:10]}: invalid argument"
            )
        total += size
    _check_total(total)
    return checked


def checked_label_set(labels: Mapping[str, str]) -> None:
    """InvalidArgument if the whole label set of a snapshot (after an Update) is too big."""
    if len(labels) > MAX_LABEL_COUNT:
        raise InvalidArgument(
            f"{len(labels)} labels after update, more than the maximum of {MAX_LABEL_COUNT}"
            ": invalid argument"
        )
    _check_total(sum(_utf8_size(k) + _utf8_size(v) for k, v in labels.items()))


def _check_total(total: int) -> None:
    if total > MAX_LABELS_SIZE:
        raise InvalidArgument(
            f"labels total {total} bytes, more than the maximum of {MAX_LABELS_SIZE}"
            ": invalid argument"
        )


def checked_key(what: str, key: str) -> None:
    """InvalidArgument if ``key`` (a snapshot key or name) is empty, too long or has a
    control character (see the module doc).

    [choice] containerd's metadata layer never forwards an empty key; an empty key would
    also be indistinguishable from "no parent", so it is refused.
    """
    if not key:
        raise InvalidArgument(f"{what} must not be empty: invalid argument")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} {key[:40]!r} is not valid Unicode: invalid argument"
        ) from None
    if size > MAX_KEY_SIZE:
        raise InvalidArgument(
            f"{what} {key[:40]!r}... is {size} bytes, more than the maximum of {MAX_KEY_SIZE}"
            ": invalid argument"
        )
    if not _FORBIDDEN_KEY_CHARS.isdisjoint(key):
        raise InvalidArgument(f"{what} {key[:80]!r} contains a control character: invalid argument")


def checked_update_paths(paths: Sequence[str]) -> None:
    """InvalidArgument if an Update mask has more than MAX_UPDATE_PATHS paths."""
    if len(paths) > MAX_UPDATE_PATHS:
        raise InvalidArgument(
            f"{len(paths)} update mask paths, more than the maximum of {MAX_UPDATE_PATHS}"
            ": invalid argument"
        )
