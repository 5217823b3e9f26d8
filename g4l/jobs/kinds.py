"""The kind table: what each kind of job is, in one frozen record a kind.

Everything that differs between kinds and is not the generation itself lives here, and
every kind-dependent decision outside the worker's runners reads it: which session (if
any) a job belongs to, which live stream plays it while it runs, what its result does to
its session, its queue priority, the Socket.IO events that acknowledge and deliver it,
whether its result goes to the client before it is stored, and which model family serves
it. The runners that turn a job into a result are listed, explicitly, in
:data:`g4l.worker.kinds.RUNNERS`; ``tests/test_kinds.py`` keeps the two in step.

No torch here: the web side reads this table too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from g4l.errors import InvalidRequest
from g4l.jobs.spec import Assembly
from plugin_protocol import events
from plugin_protocol.events import GenerationEvents


class KindName(StrEnum):
    """The kinds of job (the ``kind`` field of a job record)."""

    BANG = "bang"
    CONTINUE = "continue"
    RETRY = "retry"
    GENERATE = "generate"
    STATION = "station"
    TEXT_TO_AUDIO = "text_to_audio"
    TRANSFORM = "transform"


class Priority(StrEnum):
    """Interactive jobs (a person waits) always go before background ones (stations)."""

    INTERACTIVE = "interactive"
    BACKGROUND = "background"


class Stream(StrEnum):
    """Which live HLS stream plays a job's audio while it is generated (g4l.hls)."""

    #: The session's listen stream (``session.listen_token``).
    LISTEN = "listen"
    #: The job's own one-shot stream (``oneshot:{job_id}``).
    ONESHOT = "oneshot"
    #: A station's stream; its driver asks for the job's audio (``partials.want``).
    STATION = "station"
    TRANSFORM = "transform"
    #: Never streamed.
    NONE = "none"


class Result(StrEnum):
    """What a job's result does to the session it belongs to."""

    #: A new version in the session's history, child of the version the job started from.
    APPEND = "append"
    #: A new version that replaces the session's audio (same length and format as the input).
    REPLACE = "replace"
    #: No session version: a job's own output, or a station's stretch.
    NONE = "none"


@dataclass(frozen=True)
class Kind:
    """One kind of job (see the module docstring). Every field is stated for every kind:
    ``None`` means "none, on purpose"."""

    name: KindName
    #: The model family that serves it (the worker picks its engine by ``spec.model``,
    #: whose family the spec also names: the job's stream).
    family: str
    #: It belongs to a device session (``Job.session_id`` names one that must exist).
    session_bound: bool
    stream: Stream
    #: What the result does to its session (the runner makes it so: a session runner's
    #: ``Outcome.version``).
    result: Result
    priority: Priority
    #: The Socket.IO events that acknowledge and deliver it to a device, or ``None``:
    #: its client learns of it another way (the HTTP API's ``job_update``, a station's HLS).
    events: GenerationEvents | None
    #: The result goes to the web nodes (the Redis hand-off) before GridFS has it: a client
    #: is waiting on a socket. Otherwise it is stored before the job completes.
    deliver_first: bool
    #: Which end of the session's audio a session kind's prompt is cut from, and how its
    #: result is assembled (:meth:`g4l.services.specs.SpecResolver.session_spec`); ``None``
    #: for a kind whose service builds its spec another way.
    prompt_end: Literal["head", "tail"] | None = None
    assembly: Assembly | None = None


_MUSICGEN = "musicgen"
_MELODYFLOW = "melodyflow"

#: Every kind, by name.
KINDS: dict[KindName, Kind] = {k.name: k for k in (
    Kind(KindName.BANG, _MUSICGEN, session_bound=True, stream=Stream.LISTEN, result=Result.APPEND,
         priority=Priority.INTERACTIVE, events=events.BANG, deliver_first=True,
         prompt_end="head", assembly=Assembly.MODEL),
    Kind(KindName.CONTINUE, _MUSICGEN, session_bound=True, stream=Stream.LISTEN, result=Result.APPEND,
         priority=Priority.INTERACTIVE, events=events.CONTINUE, deliver_first=True,
         prompt_end="tail", assembly=Assembly.SPLICE),
    Kind(KindName.RETRY, _MUSICGEN, session_bound=True, stream=Stream.LISTEN, result=Result.APPEND,
         priority=Priority.INTERACTIVE, events=events.RETRY, deliver_first=True,
         prompt_end="tail", assembly=Assembly.SPLICE),
    Kind(KindName.GENERATE, _MUSICGEN, session_bound=False, stream=Stream.ONESHOT, result=Result.NONE,
         priority=Priority.INTERACTIVE, events=None, deliver_first=False),
    Kind(KindName.STATION, _MUSICGEN, session_bound=False, stream=Stream.STATION, result=Result.NONE,
         priority=Priority.BACKGROUND, events=None, deliver_first=False),
    # jerry: a clip from text, answered over HTTP (the upstream routes wait for it).
    Kind(KindName.TEXT_TO_AUDIO, "stable_audio", session_bound=False, stream=Stream.NONE, result=Result.NONE,
         priority=Priority.INTERACTIVE, events=None, deliver_first=False),
    # terry: the session's take rewritten (same length and format); its listen stream plays
    # the whole new take when it is done (the editor has no partial audio to stream).
    Kind(KindName.TRANSFORM, _MELODYFLOW, session_bound=True, stream=Stream.LISTEN, result=Result.REPLACE,
         priority=Priority.INTERACTIVE, events=events.TRANSFORM, deliver_first=True),
)}


def parse(name: str) -> KindName | None:
    """The kind called ``name``, or ``None`` (a record written by another server version)."""
    try:
        return KindName(name)
    except ValueError:
        return None


def _known(name: str) -> Kind | None:
    kind = parse(name)
    return KINDS.get(kind) if kind is not None else None


def of(name: str) -> Kind:
    """The record of the kind called ``name``.

    :raises InvalidRequest: no such kind (a programming error upstream: the services only
        queue kinds of this table)."""
    kind = _known(name)
    if kind is None:
        raise InvalidRequest(f"unknown job kind {name!r}; the kinds are: {', '.join(KINDS)}")
    return kind


def stream_of(name: str) -> Stream:
    """Which live stream plays a ``name`` job (a name read from a notice: unknown ones
    are never streamed)."""
    kind = _known(name)
    return kind.stream if kind is not None else Stream.NONE


def result_event(name: str) -> str | None:
    """The Socket.IO event that delivers a ``name`` job's result, or ``None``."""
    kind = _known(name)
    return kind.events.result if kind is not None and kind.events is not None else None


def with_events() -> list[Kind]:
    """The kinds a device drives over Socket.IO, in table order."""
    return [k for k in KINDS.values() if k.events is not None]
