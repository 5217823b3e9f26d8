"""Every Redis key and channel name, built in one place."""

from __future__ import annotations

import re

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


def session(session_id: str) -> str:
    return f"{PREFIX}:session:{session_id}"


def session_versions(session_id: str) -> str:
    """A session's history: its versions' records (:mod:`g4l.store.history`)."""
    return f"{PREFIX}:session:{session_id}:versions"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def cancel(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:cancel"


def worker(name: str) -> str:
    """A worker's heartbeat (expires when the worker stops beating)."""
    return f"{PREFIX}:worker:{name}"


def web_node(name: str) -> str:
    """A web process's heartbeat (expires when the process stops beating)."""
    return f"{PREFIX}:web_node:{name}"


def result(job_id: str) -> str:
    """A finished job's WAV, held briefly so web nodes can send it before GridFS has it."""
    return f"{PREFIX}:result:{job_id}"


def partial(job_id: str, index: int) -> str:
    """Piece ``index`` of a running job's streamed audio (raw float32, short TTL)."""
    return f"{PREFIX}:partial:{job_id}:{index}"


def partial_wanted(job_id: str) -> str:
    """Set when a job's audio is to be streamed although no session stream or one-shot
    stream asks for it (a station driver that has nothing left to play)."""
    return f"{PREFIX}:partial:{job_id}:wanted"


def prompt(job_id: str) -> str:
    """A queued job's prompt window (a small WAV at the model's rate), left by the web
    node so the worker can start without waiting for the full input in GridFS."""
    return f"{PREFIX}:prompt:{job_id}"


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(value: object) -> bool:
    """Whether ``value`` has the shape of an id the server hands out (session, job,
    station: up to 64 of [A-Za-z0-9_-]). Anything else names nothing, and is never put
    into a key or echoed (a lone surrogate cannot even be encoded)."""
    return isinstance(value, str) and bool(_ID.match(value))


def upload(session_id: str) -> str:
    """Chunks of a chunked upload (hash: index -> base64 fragment)."""
    return f"{PREFIX}:upload:{session_id}"


def rate(client: str, window: int) -> str:
    return f"{PREFIX}:rate:{client}:{window}"


#: Set of listen tokens whose live HLS stream should be running (the packager runs them).
STREAMS = f"{PREFIX}:streams"
#: Set of station ids that are running (the packager resumes them after a restart).
STATIONS = f"{PREFIX}:stations"


def listen(token: str) -> str:
    """A live stream, by its read-only listen token (hash: kind, ref, state, buffered_s...)."""
    return f"{PREFIX}:listen:{token}"


def listeners(token: str) -> str:
    """Sorted set of who fetched a stream's playlist recently (member -> last fetch time)."""
    return f"{PREFIX}:listen:{token}:listeners"


def stream_owner(token: str) -> str:
    """The lease of the packager process that encodes a stream (expires when it stops)."""
    return f"{PREFIX}:listen:{token}:owner"


def station(station_id: str) -> str:
    """A station's state (hash: prompts, model, last blob, job in flight, rotations...)."""
    return f"{PREFIX}:station:{station_id}"


def rate_log(client: str) -> str:
    """Sorted set of a client's recent generation requests (sliding-window rate limit)."""
    return f"{PREFIX}:ratelog:{client}"


def station_chunks(station_id: str) -> str:
    """List of a station's stored chunks not yet wholly played, in play order (JSON each:
    blob id, seconds, prompt...); the play position is in its hash (:func:`station`)."""
    return f"{PREFIX}:station:{station_id}:chunks"


def owner_stations(owner: str) -> str:
    """Set of the station ids an owner started (its per-key quota counts the running ones)."""
    return f"{PREFIX}:owner:{owner}:stations"


def owner_uploads(owner: str) -> str:
    """Hash of an owner's unfinished chunked uploads: session id -> bytes of chunks stored
    (:mod:`g4l.services.upload_quota`)."""
    return f"{PREFIX}:owner:{owner}:uploads"


def owner_jobs(owner: str) -> str:
    """Sorted set of an owner's (API key hash or IP) recent job ids, by creation time."""
    return f"{PREFIX}:owner:{owner}:jobs"


def oneshot(stream_id: str) -> str:
    """A realtime API stream: one generation played live (hash: job, token, owner, text...)."""
    return f"{PREFIX}:oneshot:{stream_id}"


def oneshot_mp4_lock(stream_id: str) -> str:
    """Held while one web process encodes a one-shot's MP4 (the others wait for it)."""
    return f"{PREFIX}:oneshot:{stream_id}:mp4lock"


def owner_oneshots(owner: str) -> str:
    """Set of an owner's realtime API streams (its cap counts the running ones)."""
    return f"{PREFIX}:owner:{owner}:oneshots"


def genre_stream(owner: str, digest: str) -> str:
    """The station a ``get_stream`` of these parameters by this owner plays (its id)."""
    return f"{PREFIX}:genre:{owner}:{digest}"


def station_outputs(station_id: str) -> str:
    """Sorted set of a station's RTMP output ids, by creation time (stopped ones too, a few)."""
    return f"{PREFIX}:station:{station_id}:outputs"


def station_outputs_live(station_id: str) -> str:
    """Set of a station's output ids that should be pushing (the packager runs these)."""
    return f"{PREFIX}:station:{station_id}:outputs:live"


def station_output(station_id: str, output_id: str) -> str:
    """One RTMP output (hash: url without its key, visual, state, reconnects, bitrate...)."""
    return f"{PREFIX}:station:{station_id}:output:{output_id}"


def station_output_secret(station_id: str, output_id: str) -> str:
    """An output's stream key, apart from everything that is ever returned or logged."""
    return f"{PREFIX}:station:{station_id}:output:{output_id}:secret"


def station_recordings(station_id: str) -> str:
    """Sorted set of a station's finished recording ids, by the wall time they start at."""
    return f"{PREFIX}:station:{station_id}:recordings"


def station_recording(station_id: str, recording_id: str) -> str:
    """One recording (hash: blob, started_at, duration_s, bytes)."""
    return f"{PREFIX}:station:{station_id}:recording:{recording_id}"


def station_history(station_id: str) -> str:
    """Sorted set of a station's buffer samples (member ``"t|buffered_s|state"``, score t)."""
    return f"{PREFIX}:station:{station_id}:history"
