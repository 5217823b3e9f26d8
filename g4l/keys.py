"""Every Redis key and channel name, built in one place."""

from __future__ import annotations

PREFIX = "g4l"

#: Pub/sub channel for small notices (progress, started, completed, failed). Never audio.
NOTICES = f"{PREFIX}:notices"
#: Consumer group shared by every worker.
WORKER_GROUP = "workers"
#: Sorted set of queued job ids, ordered by (priority, enqueue sequence).
WAITING = f"{PREFIX}:queue:waiting"
#: Set of job ids currently running.
RUNNING = f"{PREFIX}:queue:running"
SEQUENCE = f"{PREFIX}:queue:seq"
#: Exponential moving average of a job's run time, for ETAs.
JOB_SECONDS = f"{PREFIX}:stats:job_seconds"
WORKERS = f"{PREFIX}:workers"
MAINTENANCE_LOCK = f"{PREFIX}:lock:maintenance"


def stream(priority: str) -> str:
    """The job stream of a priority class ('interactive' or 'background')."""
    return f"{PREFIX}:jobs:{priority}"


def session(session_id: str) -> str:
    return f"{PREFIX}:session:{session_id}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def cancel(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:cancel"


def worker(name: str) -> str:
    """A worker's heartbeat (expires when the worker stops beating)."""
    return f"{PREFIX}:worker:{name}"


def upload(session_id: str) -> str:
    """Chunks of a chunked upload (hash: index -> base64 fragment)."""
    return f"{PREFIX}:upload:{session_id}"


def rate(client: str, window: int) -> str:
    return f"{PREFIX}:rate:{client}:{window}"
