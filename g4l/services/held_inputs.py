"""Uploaded continue inputs a web node keeps in memory until their result is delivered.

With the input at hand, the worker needs to send back only the new audio
(:mod:`g4l.jobs.handoff`); the node joins it to the client's own bytes. Memory is bounded
by a byte budget and an age limit. An input that does not fit is not held (its job's
result then comes back whole): evicting an older one instead would make its job, already
told to send only new audio, read the input back from GridFS. One that was dropped anyway
(age, a restart) is read from GridFS, so this is a speed-up and never the only copy.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class HeldInputs:
    """Job id -> input WAV bytes, at most ``max_bytes`` of them, each at most ``max_age_s``."""

    def __init__(self, max_bytes: int, max_age_s: float = 3600.0) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def put(self, job_id: str, wav: bytes) -> bool:
        """Hold ``wav`` for ``job_id``; False (nothing held) when the budget has no room."""
        with self._lock:
            self._drop(job_id)
            self._expire(time.monotonic())
            if self._bytes + len(wav) > self.max_bytes:
                return False
            self._items[job_id] = (time.monotonic(), wav)
            self._bytes += len(wav)
        return True

    def get(self, job_id: str) -> bytes | None:
        """The input held for ``job_id`` (kept), or None."""
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.get(job_id)
            return item[1] if item else None

    def pop(self, job_id: str) -> bytes | None:
        """The input held for ``job_id``, no longer held, or None."""
        with self._lock:
            item = self._items.get(job_id)
            self._drop(job_id)
            return item[1] if item else None

    def discard(self, job_id: str) -> None:
        """Forget ``job_id``'s input (its job ended without needing it)."""
        with self._lock:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        item = self._items.pop(job_id, None)
        if item is not None:
            self._bytes -= len(item[1])

    def _expire(self, now: float) -> None:
        while self._items:
            job_id, (at, _wav) = next(iter(self._items.items()))
            if now - at <= self.max_age_s:
                return
            self._drop(job_id)
