"""Small notices about jobs, published on one Redis pub/sub channel.

They carry ids and numbers only; audio stays in GridFS (Redis cuts a pub/sub client that
falls 32 MB behind). Every web node listens and relays to the sockets it holds.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from g4l import keys

STARTED = "started"
PROGRESS = "progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELED = "canceled"
QUEUE_CHANGED = "queue_changed"


def publish(r: redis.Redis | redis.client.Pipeline, notice_type: str, **fields: Any) -> None:
    """Publish a notice of ``notice_type`` (a constant above); ``r`` may be a pipeline."""
    r.publish(keys.NOTICES, json.dumps({"type": notice_type, **fields}))


def decode(message: bytes | str) -> dict[str, Any]:
    return json.loads(message)
