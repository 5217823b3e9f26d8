"""Retention: sessions expire in Redis by TTL; their audio is swept from GridFS here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import redis

from g4l import keys
from g4l.log import get_logger
from g4l.store.blobs import BlobStore
from g4l.store.sessions import SessionStore

log = get_logger(__name__)

SWEEP_EVERY_S = 600


def expire_indexed(r: redis.Redis, index: str, member_key: Callable[[str], str], seconds: int) -> None:
    """Set ``seconds`` to live on the sorted set ``index`` and on the record of each of
    its members (``member_key(member)``): a stopped station's outputs or recordings go with
    it."""
    members = r.zrange(index, 0, -1)
    with r.pipeline() as p:
        p.expire(index, seconds)
        for member in members:
            p.expire(member_key(member), seconds)
        p.execute()


def sweep(blobs: BlobStore, sessions: SessionStore, retention_s: float) -> int:
    """Delete every blob older than ``retention_s`` whose session is gone (a running
    station counts as live: its outputs' uploaded visuals are kept). Returns how many."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention_s)
    live = sessions.live_ids() | set(sessions.r.smembers(keys.STATIONS))
    deleted = blobs.delete_older_than(cutoff, keep_sessions=live)
    if deleted:
        log.info("retention sweep", deleted_blobs=deleted)
    return deleted


def sweep_if_due(r: redis.Redis, blobs: BlobStore, sessions: SessionStore, retention_s: float) -> int:
    """Run :func:`sweep` at most once per ``SWEEP_EVERY_S`` across all processes."""
    if not r.set(f"{keys.MAINTENANCE_LOCK}:retention", "1", nx=True, ex=SWEEP_EVERY_S):
        return 0
    return sweep(blobs, sessions, retention_s)


def prune_history(blobs: BlobStore, sessions: SessionStore, session_id: str) -> int:
    """Apply ``G4L_HISTORY_MAX`` to one session: its oldest versions beyond the bound lose
    their audio (never the current version nor its nearest ancestors). Best effort: a failed delete
    leaves a file the retention sweep takes later. Returns how many files were deleted."""
    deleted = 0
    for blob_id in sessions.prune(session_id):
        try:
            blobs.delete(blob_id)
            deleted += 1
        except Exception as exc:  # the store is down: the sweep gets it once the session ends
            log.warning("pruning a version's audio failed", session_id=session_id, blob_id=blob_id,
                        error=str(exc)[:200])
    if deleted:
        log.info("history pruned", session_id=session_id, deleted_blobs=deleted)
    return deleted
