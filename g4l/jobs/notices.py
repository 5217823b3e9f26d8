"""Small notices about jobs, published on one Redis pub/sub channel, and the one loop
that listens to them.

They carry ids and numbers only; audio stays in Redis keys and GridFS (Redis cuts a
pub/sub client that falls 32 MB behind). Every web node and packager listens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from g4l import keys
from g4l.jobs.records import JobStatus
from g4l.log import get_logger

log = get_logger(__name__)

STARTED = "started"
PROGRESS = "progress"
#: A job ended: one notice each, named after its final status.
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELED = JobStatus.CANCELED.value
QUEUE_CHANGED = "queue_changed"
#: A piece of a running job's audio is in Redis (streamed generation, :mod:`g4l.jobs.partials`).
PARTIAL = "partial"
#: Notices after which a job has ended.
FINAL = (COMPLETED, FAILED, CANCELED)
#: Seconds between two attempts to subscribe again after the connection was lost.
RESUBSCRIBE_S = 1.0


def publish(r: redis.Redis | redis.client.Pipeline, notice_type: str, **fields: Any) -> None:
    """Publish a notice of ``notice_type`` (a constant above); ``r`` may be a pipeline."""
    r.publish(keys.NOTICES, json.dumps({"type": notice_type, **fields}))


def decode(message: bytes | str) -> dict[str, Any]:
    return json.loads(message)


def listen(r: redis.Redis, handle: Callable[[dict[str, Any]], None], stopped: Callable[[], bool],
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Call ``handle`` with every notice until ``stopped()``; resubscribe (after
    :data:`RESUBSCRIBE_S`) whenever Redis drops the subscription. A notice that
    ``handle`` fails on is logged and skipped. Runs in a thread or a greenlet.

    :param sleep: the pause between attempts (``gevent.sleep`` in a greenlet).
    """
    while not stopped():
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.NOTICES)
            while not stopped():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    try:
                        handle(decode(message["data"]))
                    except Exception:
                        log.exception("handling a notice failed")
        except redis.RedisError as exc:
            log.warning("notice subscription lost; resubscribing", error=str(exc)[:200])
            sleep(RESUBSCRIBE_S)
        finally:
            try:
                pubsub.close()
            except Exception:
                pass
