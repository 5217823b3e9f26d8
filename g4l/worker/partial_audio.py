"""The worker's side of streamed generation: a job's :class:`~g4l.engine.base.AudioCallback`
that publishes each piece of its audio (:mod:`g4l.jobs.partials`)."""

from __future__ import annotations

import redis

from g4l.context import Context
from g4l.engine.base import PartialAudio
from g4l.jobs import partials
from g4l.jobs.records import Job
from g4l.log import get_logger
from g4l.store.redis_wait import UNAVAILABLE

log = get_logger(__name__)


class PartialPublisher:
    """Publishes a job's pieces in order, numbered from 0. While Redis is away pieces are
    dropped (the stream's reader then takes the rest from the final result)."""

    def __init__(self, ctx: Context, job: Job) -> None:
        self.r: redis.Redis = ctx.redis_bytes
        self.job = job
        self.index = 0
        self.log = log.bind(job_id=job.id, session_id=job.session_id)

    def __call__(self, piece: PartialAudio) -> None:
        try:
            partials.publish(self.r, self.job, self.index, piece.samples, piece.start, piece.sample_rate,
                             piece.prompt_samples, piece.final)
        except UNAVAILABLE as exc:
            self.log.warning("a streamed piece was dropped (redis)", index=self.index, error=str(exc)[:200])
        self.index += 1
