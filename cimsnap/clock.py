"""A wall clock for snapshot timestamps that never repeats a value."""

from __future__ import annotations

import threading
import time

__all__ = ["MicrosecondClock"]


class MicrosecondClock:
    """Strictly increasing UTC wall-clock nanoseconds, in whole microseconds.

    Whole microseconds make the conversion to ``datetime`` (and protobuf ``Timestamp``)
    exact, so Stat and List return identical times. Strict increase guarantees that an
    Update moves ``updated`` past ``created`` and that a Commit's new ``created`` is after
    the active's, even within one microsecond. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def now_ns(self) -> int:
        """Return the current time in nanoseconds since the epoch, > every earlier value."""
        with self._lock:
            now = time.time_ns() // 1000 * 1000
            if now <= self._last:
                now = self._last + 1000
            self._last = now
            return now
