"""The kind table (g4l/jobs/kinds.py) is complete and is the one word on kinds: every kind
has a runner, its events (or none, on purpose) and a stream rule that the streaming code
follows; an unknown kind is refused before anything is queued."""

from __future__ import annotations

import pytest

from g4l import keys
from g4l.context import Context
from g4l.errors import InvalidRequest
from g4l.jobs import kinds, partials
from g4l.jobs.kinds import KINDS, KindName, Result, Stream
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.jobs.spec import GenerationSpec
from g4l.worker.kinds import RUNNERS
from plugin_protocol import events

#: Kinds that have no Socket.IO events, and why: adding a kind means deciding this.
NO_EVENTS_ON_PURPOSE = {
    KindName.GENERATE: "an HTTP API job: its client follows job_update / job_completed",
    KindName.STATION: "a station's stretch: its listeners hear it on the station's HLS stream",
    KindName.TEXT_TO_AUDIO: "jerry's clip: answered over HTTP (the upstream routes wait for it, /api/v1 polls)",
}


def test_every_kind_has_a_record_and_a_runner() -> None:
    assert set(KINDS) == set(KindName)
    assert set(RUNNERS) == set(KindName)
    for name, runner in RUNNERS.items():
        assert runner.name is name
        assert runner.deliver_first is KINDS[name].deliver_first
    for name, kind in KINDS.items():
        assert kind.name is name
        families = {KindName.TEXT_TO_AUDIO: "stable_audio", KindName.TRANSFORM: "melodyflow"}
        assert kind.family == families.get(name, "musicgen")


def test_every_kind_has_its_events_or_none_on_purpose() -> None:
    for name, kind in KINDS.items():
        if kind.events is None:
            assert name in NO_EVENTS_ON_PURPOSE, f"{name} has no Socket.IO events: say why in NO_EVENTS_ON_PURPOSE"
        else:
            assert name not in NO_EVENTS_ON_PURPOSE
            assert kind.events in events.GENERATIONS
    used = [k.events for k in KINDS.values() if k.events is not None]
    assert len(used) == len(set(used)), "two kinds share their events: a client could not tell them apart"
    # Delivered first means to the session's web node (the hand-off), so only a session's kind is.
    assert all(k.session_bound for k in KINDS.values() if k.deliver_first)
    assert all(k.deliver_first for k in KINDS.values() if k.events is not None)


def test_session_traits_agree() -> None:
    for name, kind in KINDS.items():
        if kind.result is not Result.NONE or kind.stream is Stream.LISTEN:
            assert kind.session_bound, f"{name}: its result or stream needs a session"
        if kind.prompt_end is not None or kind.assembly is not None:
            assert kind.session_bound and kind.prompt_end and kind.assembly, f"{name}: a session kind's spec shape"


def test_unknown_kinds_are_refused_clearly() -> None:
    with pytest.raises(InvalidRequest, match="unknown job kind 'transmogrify'"):
        kinds.of("transmogrify")
    assert kinds.parse("transmogrify") is None
    assert kinds.stream_of("transmogrify") is Stream.NONE
    assert kinds.result_event("transmogrify") is None
    assert kinds.result_event("continue") == events.MUSIC_CONTINUED


def _job(kind: str, session_id: str = "") -> Job:
    return Job(id=new_job_id(), kind=kind, session_id=session_id,  # type: ignore[arg-type]
               spec=GenerationSpec(model="debug", output_seconds=30))


def test_enqueue_refuses_an_unknown_kind_and_writes_nothing(ctx: Context) -> None:
    job = _job("transmogrify")
    depth = ctx.queue.depth()
    with pytest.raises(InvalidRequest, match="unknown job kind"):
        ctx.queue.enqueue(job)
    assert ctx.queue.depth() == depth
    assert ctx.jobs.get(job.id) is None
    with pytest.raises(InvalidRequest, match="needs a session"):
        ctx.queue.enqueue(_job(KindName.CONTINUE))  # session-bound, but no session named
    assert ctx.queue.depth() == depth
    ctx.queue.enqueue(_job(KindName.GENERATE))  # a known kind goes in
    assert ctx.queue.depth() == depth + 1


def test_a_record_of_an_unknown_kind_reads_as_stale(ctx: Context) -> None:
    job = _job(KindName.GENERATE)
    ctx.jobs.save(job)
    ctx.redis.hset(keys.job(job.id), "kind", "from_a_newer_server")
    read = ctx.jobs.get(job.id)
    assert read is not None and read.stale and read.kind == "from_a_newer_server"
    assert read.status is JobStatus.QUEUED


def test_every_kind_is_streamed_by_its_stream_rule(ctx: Context) -> None:
    """partials.wanted follows each kind's stream: a live listen stream plays session
    kinds, a one-shot stream plays its job, a station's job only when its driver asks."""
    r = ctx.redis
    for name, kind in KINDS.items():
        session = ctx.sessions.create()
        job = _job(name, session.id if kind.session_bound or kind.stream is Stream.STATION else "")
        assert not partials.wanted(r, job), f"{name}: nobody listens yet"
        token = new_job_id()
        r.sadd(keys.STREAMS, token)
        r.hset(keys.listen(token), "state", "live")
        r.hset(keys.session(session.id), "listen_token", token)
        r.hset(keys.oneshot(job.id), "token", token)
        heard = partials.wanted(r, job)
        assert heard is (kind.stream in (Stream.LISTEN, Stream.ONESHOT)), f"{name} ({kind.stream})"
        if kind.stream is Stream.STATION:
            partials.want(r, job.id)
            assert partials.wanted(r, job)
