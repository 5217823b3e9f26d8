"""Retention: sessions expire in Redis by TTL; their audio is swept from GridFS here."""

from __future__ import annotations

import datetime as dt

from g4l import keys
from g4l.context import Context
from g4l.log import get_logger

log = get_logger(__name__)

SWEEP_EVERY_S = 600


def sweep(ctx: Context) -> int:
    """Delete every blob older than the retention whose session is gone. Returns how many."""
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ctx.settings.retention_seconds)
    deleted = ctx.blobs.delete_older_than(cutoff, keep_sessions=ctx.sessions.live_ids())
    if deleted:
        log.info("retention sweep", deleted_blobs=deleted)
    return deleted


def sweep_if_due(ctx: Context) -> int:
    """Run :func:`sweep` at most once per ``SWEEP_EVERY_S`` across all processes."""
    if not ctx.redis.set(f"{keys.MAINTENANCE_LOCK}:retention", "1", nx=True, ex=SWEEP_EVERY_S):
        return 0
    return sweep(ctx)
