"""Job records in Redis: one hash a job, with an explicit status.

queued -> running -> completed | failed | canceled (running -> queued again when a dead
worker's job is recovered, or a background job gives way). Only
:mod:`g4l.jobs.lifecycle` changes a job's status.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, cast

import redis

from g4l import keys
from g4l.jobs import kinds
from g4l.jobs.kinds import KindName, Priority
from g4l.jobs.spec import GenerationSpec

__all__ = ["Job", "JobStatus", "JobStore", "KindName", "Priority", "new_job_id"]


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        """Whether the job has ended (nothing will change it again)."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)

    @property
    def pending(self) -> bool:
        """Queued or running: a result may still come."""
        return not self.final


@dataclass
class Job:
    """One generation request, as the worker needs it.

    :param kind: its kind (:mod:`g4l.jobs.kinds`; checked when it is queued).
    :param session_id: the device session (or station) it belongs to; ``""`` for none.
    :param spec: what to generate, resolved by the service layer.
    :param hold_input: the web node that queued it keeps the input in memory, so the
        result may come back as new audio only (:mod:`g4l.jobs.handoff`).
    :param parent_version: the session version its result is made from (its parent in the
        session's history; None: a root, such as a bang's).
    """

    id: str
    kind: KindName
    session_id: str
    spec: GenerationSpec
    priority: Priority = Priority.INTERACTIVE
    status: JobStatus = JobStatus.QUEUED
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
    hold_input: bool = False
    parent_version: int | None = None
    #: Read from a record without a readable spec (written by an earlier server version):
    #: it can be shown, and failed clearly, but not run.
    stale: bool = field(default=False, compare=False)

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def family(self) -> str:
        """The model family that runs it (the streams it is queued on)."""
        return self.spec.family

    def to_redis(self) -> dict[str, str]:
        data: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "session_id": self.session_id, "spec": self.spec.model_dump_json(),
            "model": self.spec.model, "priority": self.priority.value, "status": self.status.value,
            "progress": self.progress, "attempts": self.attempts, "created": self.created, "started": self.started,
            "finished": self.finished, "output_blob": self.output_blob, "error": self.error,
            "error_code": self.error_code, "worker": self.worker, "owner": self.owner,
            "hold_input": "1" if self.hold_input else "", "parent_version": self.parent_version,
        }
        return {k: "" if v is None else str(v) for k, v in data.items()}

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Job:
        def opt(key: str) -> str | None:
            return data.get(key) or None

        def optf(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        stale = False
        try:
            spec = GenerationSpec.model_validate_json(data["spec"])
        except (KeyError, ValueError):
            spec, stale = GenerationSpec(model=data.get("model") or "unknown", output_seconds=30.0), True
        kind = kinds.parse(data["kind"])
        if kind is None:
            # A kind this server does not know (another version queued it): the record is
            # shown and failed by its name, never run nor looked up in the kind table.
            kind, stale = cast(KindName, data["kind"]), True
        return cls(
            id=data["id"], kind=kind, session_id=data["session_id"], spec=spec, stale=stale,
            priority=Priority(data.get("priority") or Priority.INTERACTIVE.value),
            status=JobStatus(data.get("status") or JobStatus.QUEUED.value),
            progress=int(float(data.get("progress") or 0)), attempts=int(data.get("attempts") or 0),
            created=float(data.get("created") or 0), started=optf("started"), finished=optf("finished"),
            output_blob=opt("output_blob"), error=opt("error"), error_code=opt("error_code"),
            worker=opt("worker"), owner=opt("owner"), hold_input=bool(data.get("hold_input")),
            parent_version=int(data["parent_version"]) if data.get("parent_version") else None,
        )


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Read and write job records (their status only through :mod:`g4l.jobs.lifecycle`)."""

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

    def status_of(self, job_id: str) -> JobStatus | None:
        """A job's status alone (None: no record): one field, for readers that need no more
        (every status probe of an idle session asks whether its last job was canceled)."""
        value = self.r.hget(keys.job(job_id), "status")
        return JobStatus(value) if value else None

    def session_ids(self, job_ids: list[str]) -> dict[str, str]:
        """Job id -> its session id ('' for none), one round trip for all of them."""
        with self.r.pipeline(transaction=False) as p:
            for job_id in job_ids:
                p.hget(keys.job(job_id), "session_id")
            found = p.execute()
        return {job_id: (sid or "") for job_id, sid in zip(job_ids, found, strict=True)}

    def update(self, job_id: str, pipe: Any = None, **fields: Any) -> None:
        """Write record fields (timings, metadata; a status is a :class:`JobStatus`)."""
        mapping = {k: "" if v is None else str(v.value if isinstance(v, Enum) else v) for k, v in fields.items()}
        (pipe if pipe is not None else self.r).hset(keys.job(job_id), mapping=mapping)

    def flag_cancel(self, job_id: str) -> None:
        """Ask whoever runs the job to stop between model steps (see lifecycle.request_cancel)."""
        self.r.set(keys.cancel(job_id), "1", ex=self.ttl)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.cancel(job_id)))
