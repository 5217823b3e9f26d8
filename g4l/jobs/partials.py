"""Streamed generation's transport: pieces of a running job's audio, from the worker to
whoever plays it live (the packager's session, one-shot and station streams).

Each piece is raw float32 PCM in a short-lived Redis key (:func:`g4l.keys.partial`) and a
small ``partial`` notice (ids and numbers only) on the one notice channel, published
together, in order, before the job's ``completed`` notice. The pieces are the model's
output as the engine returns it (the re-decoded prompt of a continuation included):
``start``/``end`` are sample positions in it and ``prompt_samples`` is where the prompt
ends, so each reader keeps what it plays. The last piece (``final``) is the rest of the
final, whole decode: joined, the pieces are the job's output (the joins within the
windowed decoding's tolerance, docs/engine-batching.md).

A job is streamed only when someone can hear it (:func:`wanted`): its session has a live
listen stream, a one-shot stream plays it, or a station driver asked for it
(:func:`want`). Other jobs pay one or two Redis reads at their start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from g4l import keys
from g4l.jobs import kinds, notices
from g4l.jobs.kinds import Stream
from g4l.jobs.records import Job

#: How long a piece stays readable: its reader takes it within a second or two.
PIECE_TTL_S = 60


@dataclass(frozen=True)
class Piece:
    """What a ``partial`` notice says (the samples are read with :func:`read`)."""

    job_id: str
    session_id: str
    index: int
    start: int
    end: int
    prompt_samples: int
    sample_rate: int
    channels: int
    final: bool

    @classmethod
    def of(cls, notice: dict[str, Any]) -> Piece:
        return cls(str(notice["job_id"]), str(notice.get("session_id") or ""), int(notice["index"]),
                   int(notice["start"]), int(notice["end"]), int(notice["prompt_samples"]),
                   int(notice["sample_rate"]), int(notice["channels"]), bool(notice["final"]))


def want(r: redis.Redis, job_id: str, ttl_s: int = 24 * 3600) -> None:
    """Ask for ``job_id``'s audio to be streamed (set before the job starts, e.g. by a
    station driver whose buffer is empty)."""
    r.set(keys.partial_wanted(job_id), "1", ex=ttl_s)


def wanted(r: redis.Redis, job: Job) -> bool:
    """Whether anyone can hear ``job``'s audio while it is generated."""
    if r.exists(keys.partial_wanted(job.id)):
        return True
    stream = kinds.stream_of(job.kind)
    if stream is Stream.LISTEN and job.session_id:
        token = r.hget(keys.session(job.session_id), "listen_token")
    elif stream is Stream.ONESHOT:
        token = r.hget(keys.oneshot(job.id), "token")
    else:  # a station's driver asks with want()
        return False
    if not token:
        return False
    return bool(r.sismember(keys.STREAMS, token)) and r.hget(keys.listen(token), "state") != "stopped"


def publish(r: redis.Redis, job: Job, index: int, samples: np.ndarray, start: int, sample_rate: int,
            prompt_samples: int, final: bool) -> None:
    """Leave piece ``index`` (``(channels, frames)`` float32) and announce it."""
    x = np.ascontiguousarray(samples, dtype="<f4")
    with r.pipeline(transaction=False) as p:
        p.set(keys.partial(job.id, index), x.tobytes(), ex=PIECE_TTL_S)
        notices.publish(p, notices.PARTIAL, job_id=job.id, session_id=job.session_id or "", kind=job.kind,
                        index=index, start=start, end=start + int(x.shape[1]), prompt_samples=prompt_samples,
                        sample_rate=sample_rate, channels=int(x.shape[0]), final=final)
        p.execute()


def read(r: redis.Redis, piece: Piece) -> np.ndarray | None:
    """The samples of ``piece`` (``(channels, frames)`` float32), or ``None`` once expired.
    ``r`` must return bytes (``Context.redis_bytes``)."""
    raw = r.get(keys.partial(piece.job_id, piece.index))
    if raw is None:
        return None
    x = np.frombuffer(raw, dtype="<f4")
    frames = piece.end - piece.start
    if x.size != piece.channels * frames:
        raise ValueError(f"partial audio piece {piece.index} of job {piece.job_id} has {x.size} samples, "
                         f"expected {piece.channels * frames}")
    return x.reshape(piece.channels, frames).astype(np.float32)
