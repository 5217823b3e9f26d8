"""The durable job queue: Redis Streams with one consumer group of workers.

At-least-once delivery: a job stays pending in the group until its worker acknowledges
it; a worker that dies (its heartbeat key expires) has its pending job put back on the
stream by recovery (:mod:`g4l.jobs.recovery`), or failed once it has used its attempts.

Routing: each model family (:mod:`g4l.engine.families`) has its own streams, and a worker
reads those of the families it loads, so a job goes to a worker that can run it. The
waiting order (positions, ETAs) is one for all families.

Order: each priority class has two streams, its *front* stream (jobs put back: recovered,
or a background job that gave way) and its plain one (new jobs). A worker takes the first
entry of the first non-empty stream of: interactive front, interactive, background front,
background (one Lua script, so one round trip). A sorted set mirrors that order, so queue
positions and ETAs are one ZRANK away; its score and the stream entry are written by one
script, so two producers can never land in the streams in one order and in the sorted set
in the other: the position a client is told is the order workers take jobs in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from g4l import keys
from g4l.engine.families import FAMILIES
from g4l.errors import InvalidRequest, QueueFull
from g4l.jobs import kinds
from g4l.jobs.records import Job, JobStore, Priority
from g4l.store import heartbeats

# Background jobs sort after every interactive one in the waiting set; a job put back at
# the front of its class sorts before the others of that class.
_BACKGROUND_OFFSET = 1e15
_FRONT_OFFSET = 1e12

# Gives the job its place in the waiting order and its stream entry at once (one script
# runs alone), so the order of the sorted set is the order of the streams. ``XX``: only
# update a place the producer reserved (a job canceled meanwhile is not put back).
# The score is formatted by hand: Lua's default number format keeps 14 digits only.
_PLACE = """
local seq = redis.call('INCR', KEYS[1])
local score = string.format('%.17g', seq + tonumber(ARGV[2]))
if ARGV[3] == 'XX' then
  redis.call('ZADD', KEYS[2], 'XX', score, ARGV[1])
else
  redis.call('ZADD', KEYS[2], score, ARGV[1])
end
redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1])
return seq
"""

# The first new entry of the first stream that has one, in the order of KEYS. With none:
# ``{'', newest id of each stream}``, what a wait for the next entry starts after (every
# entry up to those was delivered already).
_CLAIM_FIRST = """
for _, name in ipairs(KEYS) do
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', name, '>')
  if got then
    local entry = got[1][2][1]
    return {name, entry[1], entry[2]}
  end
end
local newest = {''}
for i, name in ipairs(KEYS) do
  local last = redis.call('XREVRANGE', name, '+', '-', 'COUNT', 1)
  newest[i + 1] = last[1] and last[1][1] or '0-0'
end
return newest
"""


@dataclass(frozen=True)
class Claimed:
    """A job a worker took from a stream, with what it needs to acknowledge it."""

    job_id: str
    stream: str
    entry_id: str


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1-based among waiting jobs; 0 when running or done
    total_queued: int
    estimated_seconds: float


class JobQueue:
    """Enqueue, claim, acknowledge and recover jobs."""

    def __init__(self, r: redis.Redis, jobs: JobStore, default_job_seconds: float = 30.0) -> None:
        self.r = r
        self.jobs = jobs
        self.default_job_seconds = default_job_seconds
        self._groups_ready = False
        self._place = r.register_script(_PLACE)
        self._claim_first = r.register_script(_CLAIM_FIRST)

    @staticmethod
    def streams(families: Iterable[str] | None = None) -> list[str]:
        """The job streams of ``families`` (default: every family), in the order workers
        take from them: each priority class's front streams, then its plain ones."""
        chosen = list(FAMILIES) if families is None else [f for f in FAMILIES if f in set(families)]
        return [name for priority in Priority
                for make in (keys.front_stream, keys.stream) for name in (make(priority, f) for f in chosen)]

    def ensure_groups(self) -> None:
        """Create the streams and the consumer group (idempotent)."""
        if self._groups_ready:
            return
        for name in self.streams():
            try:
                self.r.xgroup_create(name, keys.WORKER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    @staticmethod
    def _offset(job: Job, front: bool) -> float:
        """What a job's score adds to its sequence number: its class, its end of the class."""
        return (_BACKGROUND_OFFSET if job.priority is Priority.BACKGROUND else 0.0) - (_FRONT_OFFSET if front else 0.0)

    @staticmethod
    def _stream_of(job: Job, front: bool) -> str:
        make = keys.front_stream if front else keys.stream
        return make(job.priority, job.family)

    # ------------------------------------------------------------ producer side
    def enqueue(self, job: Job, *, front: bool = False, limit: int | None = None) -> None:
        """Save ``job`` and put it on its priority's stream (a new job, or one
        :func:`g4l.jobs.lifecycle.requeue` put back).

        :param front: ahead of the other waiting jobs of its priority.
        :param limit: refuse with :class:`QueueFull` when this many jobs already wait. The
            place is taken first and given back when over, so racing producers can never
            push the queue past the limit.
        :raises InvalidRequest: ``job.kind`` is no kind of :mod:`g4l.jobs.kinds`, or a
            session-bound kind names no session.
        """
        # An unknown kind, or a session kind without its session, is refused before anything is written.
        if kinds.of(job.kind).session_bound and not job.session_id:
            raise InvalidRequest(f"a {job.kind} job needs a session")
        self.ensure_groups()
        offset = self._offset(job, front)
        # The place is reserved at the end of the order first (for the limit), and moved to
        # its true place when the job is written and put on its stream.
        seq = self.r.incr(keys.SEQUENCE)
        with self.r.pipeline() as p:
            p.zadd(keys.WAITING, {job.id: float(seq) + offset})
            p.zcard(keys.WAITING)
            _, waiting = p.execute()
        if limit is not None and waiting > limit:
            self.r.zrem(keys.WAITING, job.id)
            raise QueueFull(f"the queue is full ({limit} jobs); try again shortly")
        with self.r.pipeline(transaction=True) as p:
            self.jobs.save(job, p)  # first: a worker may take the entry the moment it exists
            self._place(keys=[keys.SEQUENCE, keys.WAITING, self._stream_of(job, front)],
                        args=[job.id, repr(offset), "XX"], client=p)
            p.execute()

    def replace(self, claimed: Claimed, job: Job, *, front: bool = True) -> None:
        """Put a claimed job back on the queue (recovery, a background job giving way): the
        new entry and the end of the old one in one transaction, so a fault in between
        can neither lose the job nor leave it queued twice."""
        self.ensure_groups()
        with self.r.pipeline(transaction=True) as p:
            p.xack(claimed.stream, keys.WORKER_GROUP, claimed.entry_id)
            p.xdel(claimed.stream, claimed.entry_id)
            p.srem(keys.RUNNING, claimed.job_id)
            self.jobs.save(job, p)
            self._place(keys=[keys.SEQUENCE, keys.WAITING, self._stream_of(job, front)],
                        args=[job.id, repr(self._offset(job, front)), ""], client=p)
            p.execute()

    def depth(self) -> int:
        """Jobs waiting (not yet running)."""
        return int(self.r.zcard(keys.WAITING))

    def interactive_waiting(self) -> int:
        """How many interactive jobs wait for a worker (background jobs give way to them)."""
        return int(self.r.zcount(keys.WAITING, "-inf", _BACKGROUND_OFFSET - _FRONT_OFFSET))

    def running(self) -> int:
        return int(self.r.scard(keys.RUNNING))

    def position(self, job_id: str) -> QueuePosition:
        """Where ``job_id`` stands and how long until it is done, roughly."""
        rank = self.r.zrank(keys.WAITING, job_id)
        waiting = self.depth()
        running = self.running()
        avg = self.average_job_seconds()
        if rank is None:
            return QueuePosition(0, waiting + running, avg if running else 0.0)
        return _place(rank, waiting, running, self.slots(), avg)

    def positions(self, limit: int = 500) -> dict[str, QueuePosition]:
        """Every waiting job's position (the first ``limit``), read in one pass: what a
        web node tells all its waiting clients when the queue moves."""
        with self.r.pipeline(transaction=False) as p:
            p.zrange(keys.WAITING, 0, limit - 1)
            p.zcard(keys.WAITING)
            p.scard(keys.RUNNING)
            p.get(keys.JOB_SECONDS)
            ids, waiting, running, avg = p.execute()
        if not ids:
            return {}
        seconds = float(avg) if avg else self.default_job_seconds
        slots = self.slots()
        return {_text(job_id): _place(rank, int(waiting), int(running), slots, seconds)
                for rank, job_id in enumerate(ids)}

    def slots(self) -> int:
        """Jobs the live workers can hold at once (their heartbeats' ``max_batch``; 1 a
        worker from before batching), at least 1."""
        total = 0
        for raw in heartbeats.alive(self.r, keys.WORKERS, keys.worker).values():
            try:
                total += max(1, int(json.loads(raw).get("max_batch") or 1))
            except (ValueError, TypeError, AttributeError):
                total += 1
        return max(1, total)

    def waiting_ids(self, limit: int = 500) -> list[str]:
        return list(self.r.zrange(keys.WAITING, 0, limit - 1))

    def average_job_seconds(self) -> float:
        value = self.r.get(keys.JOB_SECONDS)
        return float(value) if value else self.default_job_seconds

    def record_duration(self, seconds: float) -> None:
        """Fold a finished job's run time into the ETA average (EMA)."""
        old = self.average_job_seconds()
        self.r.set(keys.JOB_SECONDS, round(0.7 * old + 0.3 * seconds, 3))

    # ------------------------------------------------------------ worker side
    def claim(self, consumer: str, block_ms: int = 1000, families: Iterable[str] | None = None) -> Claimed | None:
        """Take the next job of ``families`` (default: all) in the waiting order:
        interactive first (jobs put back before new ones), background only when no
        interactive job waits. With nothing waiting, waits up to ``block_ms`` for a new
        entry in any of those streams, then takes the first in that order (so a wait never
        takes a newer job before one put back meanwhile)."""
        self.ensure_groups()
        streams = self.streams(families)
        claimed, newest = self._take_first(consumer, streams)
        if claimed is not None or not block_ms:
            return claimed
        if self.r.xread(dict(zip(streams, newest, strict=True)), count=1, block=block_ms):
            claimed, _ = self._take_first(consumer, streams)
        return claimed

    def _take_first(self, consumer: str, streams: list[str]) -> tuple[Claimed | None, list[str]]:
        """The first new entry of the first of ``streams`` that has one (no waiting); else
        the newest entry id of each."""
        got = self._claim_first(keys=streams, args=[keys.WORKER_GROUP, consumer])
        if _text(got[0]) == "":
            return None, [_text(v) for v in got[1:]]
        name, entry_id, flat = got
        fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return Claimed(fields.get("job_id", ""), _text(name), _text(entry_id)), []

    def mark_running(self, claimed: Claimed) -> None:
        with self.r.pipeline() as p:
            p.zrem(keys.WAITING, claimed.job_id)
            p.sadd(keys.RUNNING, claimed.job_id)
            p.execute()

    def release(self, job_id: str) -> None:
        """The job is no longer running (its entry may stay pending a little longer)."""
        self.r.srem(keys.RUNNING, job_id)

    def ack(self, claimed: Claimed) -> None:
        """The job is finished (whatever its outcome): drop it from the stream."""
        with self.r.pipeline() as p:
            p.xack(claimed.stream, keys.WORKER_GROUP, claimed.entry_id)
            p.xdel(claimed.stream, claimed.entry_id)
            p.srem(keys.RUNNING, claimed.job_id)
            p.zrem(keys.WAITING, claimed.job_id)
            p.execute()

    def remove_waiting(self, job_id: str) -> bool:
        """Take a queued job out of the waiting order (cancellation before it runs)."""
        return bool(self.r.zrem(keys.WAITING, job_id))

    # ------------------------------------------------------------ recovery
    def orphans(self, alive: set[str], min_idle_ms: int) -> list[tuple[Claimed, str]]:
        """Pending entries whose consumer is not alive, claimed away from it atomically.

        XCLAIM with ``min_idle_ms`` makes this safe when several recoverers race: only one
        of them gets each entry.
        """
        self.ensure_groups()
        found: list[tuple[Claimed, str]] = []
        for name in self.streams():
            for entry in self.r.xpending_range(name, keys.WORKER_GROUP, min="-", max="+", count=100):
                consumer = entry["consumer"]
                if consumer in alive or entry["time_since_delivered"] < min_idle_ms:
                    continue
                claimed = self.r.xclaim(name, keys.WORKER_GROUP, "recoverer", min_idle_ms,
                                        [entry["message_id"]])
                for entry_id, fields in claimed:
                    if fields:
                        found.append((Claimed(fields.get("job_id", ""), name, entry_id), consumer))
        return found


def _place(rank: int, waiting: int, running: int, slots: int, avg: float) -> QueuePosition:
    """The position of the job ``rank`` places from the front. Batching workers run
    ``slots`` jobs at once, each in about ``avg`` seconds (the average of jobs as they ran,
    batched): the jobs ahead go by in waves of ``slots``, plus (about) half a job while
    every slot is taken, plus our own. One slot: one by one."""
    eta = avg * (rank // slots + 1) + (avg / 2 if running >= slots else 0.0)
    return QueuePosition(rank + 1, waiting + running, round(eta, 1))


def _text(value: str | bytes) -> str:
    """A script's reply as text (a client without ``decode_responses`` gives bytes)."""
    return value.decode() if isinstance(value, bytes) else value
