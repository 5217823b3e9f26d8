"""Every Redis key and channel name, built in one place.

A key of one thing by its id (a session, a job, a station) is a :class:`Key`: called with
the id it gives the key string, and the keys of the thing's parts derive from it
(``station_chunks = station.part("chunks")``), so a kind's prefix is spelled once."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
#: Set of web node names (each node's heartbeat is :func:`web_node`).
WEB_NODES = f"{PREFIX}:web_nodes"
MAINTENANCE_LOCK = f"{PREFIX}:lock:maintenance"


#: The model family whose job streams keep the names from before families existed.
FIRST_FAMILY = "musicgen"


def _jobs(family: str) -> str:
    return f"{PREFIX}:jobs" if family == FIRST_FAMILY else f"{PREFIX}:jobs:{family}"


def stream(priority: str, family: str = FIRST_FAMILY) -> str:
    """The job stream of a priority class ('interactive' or 'background') for one model
    family's jobs (read by the workers that load that family)."""
    return f"{_jobs(family)}:{priority}"


def front_stream(priority: str, family: str = FIRST_FAMILY) -> str:
    """The stream of a priority class's jobs put back at the front (recovered, requeued):
    workers read it before :func:`stream`, so those jobs run before newer ones."""
    return f"{_jobs(family)}:{priority}:front"


@dataclass(frozen=True)
class Key:
    """The keys of one kind of thing, one key per id: ``g4l:<kind>:<id>``, and those of a
    part of each (:meth:`part`: ``g4l:<kind>:<id>:<part>``). Call it with the id.

    :param kind: what the id names (``session``, ``job``, ``station``...).
    :param suffix: the path below the thing's own key (``":outputs:live"``), empty for it.
    """

    kind: str
    suffix: str = ""

    def __call__(self, ident: str) -> str:
        return f"{PREFIX}:{self.kind}:{ident}{self.suffix}"

    def part(self, name: str) -> Key:
        """The keys of a part of each thing (``station.part("chunks")``)."""
        return Key(self.kind, f"{self.suffix}:{name}")


#: A device session (hash), by its id.
session = Key("session")
#: A session's history: its versions' records (:mod:`g4l.store.history`).
session_versions = session.part("versions")
#: A job's record (hash), by its id.
job = Key("job")
#: Set when a job is to be canceled (its worker stops it).
cancel = job.part("cancel")
#: A worker's heartbeat, by the worker's name (expires when the worker stops beating).
worker = Key("worker")
#: A web process's heartbeat, by its name (expires when the process stops beating).
web_node = Key("web_node")
#: A finished job's WAV, held briefly so web nodes can send it before GridFS has it.
result = Key("result")


def partial(job_id: str, index: int) -> str:
    """Piece ``index`` of a running job's streamed audio (raw float32, short TTL)."""
    return f"{PREFIX}:partial:{job_id}:{index}"


#: Set when a job's audio is to be streamed although no session stream or one-shot
#: stream asks for it (a station driver that has nothing left to play).
partial_wanted = Key("partial").part("wanted")
#: A queued job's prompt window (a small WAV at the model's rate), left by the web
#: node so the worker can start without waiting for the full input in GridFS.
prompt = Key("prompt")


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(value: object) -> bool:
    """Whether ``value`` has the shape of an id the server hands out (session, job,
    station: up to 64 of [A-Za-z0-9_-]). Anything else names nothing, and is never put
    into a key or echoed (a lone surrogate cannot even be encoded)."""
    return isinstance(value, str) and bool(_ID.match(value))


#: Chunks of a chunked upload, by its session id (hash: index -> base64 fragment).
upload = Key("upload")


def rate(client: str, window: int) -> str:
    """A client's request count in one fixed rate-limit window."""
    return f"{PREFIX}:rate:{client}:{window}"


#: Set of listen tokens whose live HLS stream should be running (the packager runs them).
STREAMS = f"{PREFIX}:streams"
#: Set of station ids that are running (the packager resumes them after a restart).
STATIONS = f"{PREFIX}:stations"

#: A live stream, by its read-only listen token (hash: kind, ref, state, buffered_s...).
listen = Key("listen")
#: Sorted set of who fetched a stream's playlist recently (member -> last fetch time).
listeners = listen.part("listeners")
#: The lease of the packager process that encodes a stream (expires when it stops).
stream_owner = listen.part("owner")
#: A station's state (hash: prompts, model, last blob, job in flight, rotations...).
station = Key("station")
#: Sorted set of a client's recent generation requests (sliding-window rate limit).
rate_log = Key("ratelog")
#: List of a station's stored chunks not yet wholly played, in play order (JSON each:
#: blob id, seconds, prompt...); the play position is in its hash (:data:`station`).
station_chunks = station.part("chunks")
_owner = Key("owner")
#: Set of the station ids an owner started (its per-key quota counts the running ones).
owner_stations = _owner.part("stations")
#: Hash of an owner's unfinished chunked uploads: session id -> bytes of chunks stored
#: (:mod:`g4l.services.upload_quota`).
owner_uploads = _owner.part("uploads")
#: Sorted set of an owner's (API key hash or IP) recent job ids, by creation time.
owner_jobs = _owner.part("jobs")
#: A realtime API stream: one generation played live (hash: job, token, owner, text...).
oneshot = Key("oneshot")
#: Held while one web process encodes a one-shot's MP4 (the others wait for it).
oneshot_mp4_lock = oneshot.part("mp4lock")
#: Set of an owner's realtime API streams (its cap counts the running ones).
owner_oneshots = _owner.part("oneshots")


def genre_stream(owner: str, digest: str) -> str:
    """The station a ``get_stream`` of these parameters by this owner plays (its id)."""
    return f"{PREFIX}:genre:{owner}:{digest}"


#: Sorted set of a station's RTMP output ids, by creation time (stopped ones too, a few).
station_outputs = station.part("outputs")
#: Set of a station's output ids that should be pushing (the packager runs these).
station_outputs_live = station_outputs.part("live")


def station_output(station_id: str, output_id: str) -> str:
    """One RTMP output (hash: url without its key, visual, state, reconnects, bitrate...)."""
    return f"{station(station_id)}:output:{output_id}"


def station_output_secret(station_id: str, output_id: str) -> str:
    """An output's stream key, apart from everything that is ever returned or logged."""
    return f"{station_output(station_id, output_id)}:secret"


#: Sorted set of a station's finished recording ids, by the wall time they start at.
station_recordings = station.part("recordings")


def station_recording(station_id: str, recording_id: str) -> str:
    """One recording (hash: blob, started_at, duration_s, bytes)."""
    return f"{station(station_id)}:recording:{recording_id}"


#: Sorted set of a station's buffer samples (member ``"t|buffered_s|state"``, score t).
station_history = station.part("history")
