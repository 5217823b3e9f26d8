"""Holds the embedded store to its memory and disk limits; run by the launcher.

The embedded MongoDB-compatible store (:func:`g4l.embedded.start_mongo`) is sized for
``G4L_STORE_MEMORY_MB`` of RSS and stays well under it under sustained writes; this guard is
what happens if it ever does not, or if its disk fills, instead of a kernel OOM kill or a
store that dies on a full disk:

* **disk**: while the free space on the store's filesystem is under ``G4L_STORE_MIN_FREE_MB``,
  new audio is refused (:class:`g4l.store.blobs.StoreLimitReached`, ``STORE_UNAVAILABLE`` with
  the reason) and ``/health`` reports the store down with the reason; reads go on. It clears
  by itself once space is freed (retention deletes old audio, or an operator does).
* **memory**: a store over ``G4L_STORE_MEMORY_MB`` at two checks in a row is logged as an
  error, reported the same way, and stopped cleanly (SIGTERM: it checkpoints, nothing written
  is lost); the launcher starts it again on its port, as after any exit.

The state lives in the store itself (collection ``store_limits``, one document), so every web
process and worker reads it where it already reads audio; it is written by this guard only.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pymongo

from g4l.embedded import ManagedProcess, rss_mb
from g4l.log import get_logger
from g4l.store.blobs import LIMITS_COLLECTION, LIMITS_ID

log = get_logger(__name__)

#: Seconds between two checks.
CHECK_EVERY_S = 2.0


@dataclass(frozen=True)
class Reading:
    """One look at the store: its RSS and the free space where its data lives."""

    rss_mb: float | None
    free_mb: float


def read(store: ManagedProcess, data_dir: Path) -> Reading:
    """The store's RSS (None when it is not running) and the free MB of ``data_dir``'s disk."""
    return Reading(rss_mb(store.proc.pid), shutil.disk_usage(data_dir).free / 2**20)


def judge(reading: Reading, memory_mb: int, min_free_mb: int, over_before: bool) -> tuple[str, str]:
    """``(state, reason)``: ``ok``, ``disk_full`` or ``memory_limit``. Memory counts only when
    the previous reading was over too (``over_before``): one transient peak is not a limit."""
    if reading.free_mb < min_free_mb:
        return "disk_full", (f"the audio store's disk is nearly full: {reading.free_mb:.0f} MB free, under "
                             f"G4L_STORE_MIN_FREE_MB={min_free_mb}; new audio is refused until space is freed")
    if reading.rss_mb is not None and reading.rss_mb > memory_mb and over_before:
        return "memory_limit", (f"the audio store used {reading.rss_mb:.0f} MB, over G4L_STORE_MEMORY_MB="
                                f"{memory_mb}; it is being restarted (no data is lost)")
    return "ok", ""


class StoreGuard:
    """Checks one embedded store every ``CHECK_EVERY_S``; call :meth:`tick` from the launcher's loop.

    :param url: the store's URL (the state document is written there).
    :param db_name: g4l's database (``G4L_MONGO_DB``).
    :param data_dir: where its data lives (its disk is the one watched).
    :param memory_mb: ``G4L_STORE_MEMORY_MB``.
    :param min_free_mb: ``G4L_STORE_MIN_FREE_MB``.
    """

    def __init__(self, url: str, db_name: str, data_dir: Path, memory_mb: int, min_free_mb: int) -> None:
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=1000,
                                                               connectTimeoutMS=1000, socketTimeoutMS=2000)
        self.limits = self.client[db_name][LIMITS_COLLECTION]
        self.data_dir = data_dir
        self.memory_mb = memory_mb
        self.min_free_mb = min_free_mb
        self.state = "unknown"
        self.reason = ""
        self._over = False
        self._next = 0.0

    def tick(self, store: ManagedProcess, now: float) -> None:
        """Look at ``store`` if a check is due; publish a changed state; stop a store over
        its memory limit (the launcher restarts it)."""
        if now < self._next or store.proc.poll() is not None:
            return
        self._next = now + CHECK_EVERY_S
        reading = read(store, self.data_dir)
        state, reason = judge(reading, self.memory_mb, self.min_free_mb, self._over)
        self._over = reading.rss_mb is not None and reading.rss_mb > self.memory_mb
        if state != self.state:
            self._publish(state, reason, reading)
        if state == "memory_limit":
            log.error("embedded store over its memory limit; restarting it", rss_mb=round(reading.rss_mb or 0),
                      limit_mb=self.memory_mb, pid=store.proc.pid)
            store.proc.send_signal(signal.SIGTERM)  # a clean stop: it checkpoints first
            self._over = False

    def _publish(self, state: str, reason: str, reading: Reading) -> None:
        doc = {"state": state, "reason": reason, "at": dt.datetime.now(dt.UTC),
               "rss_mb": round(reading.rss_mb or 0), "free_mb": round(reading.free_mb)}
        try:
            self.limits.replace_one({"_id": LIMITS_ID}, doc, upsert=True)
        except pymongo.errors.PyMongoError as exc:  # published at the next check instead
            log.warning("store limit state not written; retrying", state=state, error=str(exc)[:200])
            return
        previous, self.state, self.reason = self.state, state, reason
        if state == "disk_full":
            log.error("embedded store's disk is nearly full; new audio is refused", free_mb=round(reading.free_mb),
                      min_free_mb=self.min_free_mb)
        elif state == "ok" and previous not in ("unknown", "ok"):
            log.warning("embedded store back within its limits", was=previous, rss_mb=round(reading.rss_mb or 0),
                        free_mb=round(reading.free_mb))

    def close(self) -> None:
        self.client.close()
