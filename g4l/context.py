"""The handles every process needs (Redis, GridFS, stores, queue), built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from g4l.jobs.queue import JobQueue
from g4l.jobs.records import JobStore
from g4l.settings import Settings
from g4l.store.blobs import BlobStore
from g4l.store.sessions import SessionStore


@dataclass
class Context:
    """Shared services; cheap to pass around, one per process."""

    settings: Settings
    redis: redis.Redis
    blobs: BlobStore
    sessions: SessionStore
    jobs: JobStore
    queue: JobQueue
    #: A client that returns bytes, for the few binary values (results in flight).
    redis_bytes: redis.Redis

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        if not settings.redis_url or not settings.mongo_url:
            raise RuntimeError("REDIS_URL and MONGO_URL must be set (scripts/serve sets them for the embedded stores)")
        r = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30,
                                 socket_connect_timeout=5)
        ttl = settings.retention_seconds
        jobs = JobStore(r, ttl, max_per_owner=settings.jobs_per_owner)
        return cls(
            settings=settings,
            redis=r,
            blobs=BlobStore(settings.mongo_url, settings.mongo_db),
            sessions=SessionStore(r, ttl, history_max=settings.history_max),
            jobs=jobs,
            queue=JobQueue(r, jobs, default_job_seconds=20.0),
            redis_bytes=redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5),
        )
