"""Job records in Redis: one hash a job, with an explicit life cycle.

queued -> running -> completed | failed | canceled (running -> queued again when a dead
worker's job is recovered).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from g4l import keys

STATES = ("queued", "running", "completed", "failed", "canceled")
FINAL_STATES = ("completed", "failed", "canceled")


@dataclass
class Job:
    """One generation request, as the worker needs it."""

    id: str
    kind: str  # bang | continue | retry | generate | station
    session_id: str
    model: str
    params: dict[str, Any]
    input_blob: str | None = None
    prompt_blob: str | None = None
    priority: str = "interactive"
    status: str = "queued"
    progress: int = 0
    attempts: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    output_blob: str | None = None
    error: str | None = None
    error_code: str | None = None
    worker: str | None = None
    owner: str | None = None

    def to_redis(self) -> dict[str, str]:
        data = asdict(self)
        data["params"] = json.dumps(self.params)
        return {k: "" if v is None else str(v) for k, v in data.items()}

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Job:
        def opt(key: str) -> str | None:
            return data.get(key) or None

        def optf(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"], kind=data["kind"], session_id=data["session_id"], model=data["model"],
            params=json.loads(data.get("params") or "{}"), input_blob=opt("input_blob"),
            prompt_blob=opt("prompt_blob"), priority=data.get("priority") or "interactive",
            status=data.get("status") or "queued", progress=int(float(data.get("progress") or 0)),
            attempts=int(data.get("attempts") or 0), created=float(data.get("created") or 0),
            started=optf("started"), finished=optf("finished"), output_blob=opt("output_blob"),
            error=opt("error"), error_code=opt("error_code"), worker=opt("worker"), owner=opt("owner"),
        )


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Read and write job records."""

    def __init__(self, r: redis.Redis, ttl_seconds: int, max_per_owner: int = 500) -> None:
        self.r = r
        self.ttl = ttl_seconds
        self.max_per_owner = max_per_owner

    def save(self, job: Job, pipe: Any = None) -> None:
        target = pipe if pipe is not None else self.r
        target.hset(keys.job(job.id), mapping=job.to_redis())
        target.expire(keys.job(job.id), self.ttl)
        if job.owner:  # the owner's recent jobs, newest last (GET /api/v1/jobs)
            index = keys.owner_jobs(job.owner)
            target.zadd(index, {job.id: job.created})
            target.zremrangebyrank(index, 0, -(self.max_per_owner + 1))
            target.expire(index, self.ttl)

    def owned(self, owner: str, offset: int = 0, limit: int = 20) -> tuple[list[str], int]:
        """An owner's job ids, newest first, and how many there are."""
        index = keys.owner_jobs(owner)
        with self.r.pipeline() as p:
            p.zrevrange(index, offset, offset + limit - 1)
            p.zcard(index)
            ids, total = p.execute()
        return list(ids), int(total)

    def get(self, job_id: str) -> Job | None:
        data = self.r.hgetall(keys.job(job_id))
        return Job.from_redis(data) if data else None

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: "" if v is None else str(v) for k, v in fields.items()}
        self.r.hset(keys.job(job_id), mapping=mapping)

    def request_cancel(self, job_id: str) -> None:
        """Ask whoever runs the job to stop between model steps."""
        self.r.set(keys.cancel(job_id), "1", ex=self.ttl)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.cancel(job_id)))
