"""Pydantic models of every HTTP request and response body under ``/api/v1``.

The same classes validate requests and generate the OpenAPI document
(:mod:`g4l.web.api.openapi`), so the document cannot drift from what the server accepts.
Request models are strict (a number sent as a string is a 400, not silently converted:
HTTP clients are ours to define, unlike the device protocol's lenient payloads) and
ignore unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import JsonDict, JsonValue

from g4l.jobs.kinds import KINDS
from g4l.jobs.records import JobStatus as JobStatusValue
from plugin_protocol import payloads
from plugin_protocol.payloads import PROMPT_SECONDS_MAX, PROMPT_SECONDS_MIN, SEED_MAX
from plugin_protocol.sampling import CfgCoef, Temperature, TopK, TopP

#: A hard ceiling of the schema; the operator's ``G4L_MAX_GENERATE_SECONDS`` is applied on
#: top (and written into the served document).
DURATION_CEILING = 3600.0



#: The kinds a device session's requests queue (from the kind table), as the document shows them.
_SESSION_KINDS = [k.name.value for k in KINDS.values() if k.session_bound]
_KIND_TEXT = (" | ".join(k for k in KINDS if k not in _SESSION_KINDS)
              + f", or {'|'.join(_SESSION_KINDS)} for session jobs")
_SESSION_KIND_SCHEMA: JsonDict = {"enum": list[JsonValue](_SESSION_KINDS)}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- shared pieces
_AUDIO: JsonDict = {"contentEncoding": "base64", "contentMediaType": "audio/wav"}


class SamplingParams(_Request):
    """Sampling parameters (MusicGen's defaults apply to what is left out)."""

    temperature: Temperature | None = Field(default=None, description="Softmax temperature (default 1.0)")
    top_k: TopK | None = Field(default=None, description="Sample among the k likeliest tokens (default 250)")
    top_p: TopP | None = Field(default=None, description="Nucleus sampling; 0 uses top_k (default 0)")
    cfg_coef: CfgCoef | None = Field(default=None, description="Classifier-free guidance (default 3.0)")


class ErrorBody(_Response):
    code: str = Field(description="Stable machine-readable code, e.g. INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND, "
                                  "TOO_LARGE, RATE_LIMITED, QUEUE_FULL")
    message: str = Field(description="What went wrong, fit to show a user")
    retry_after: int | None = Field(default=None, description="Seconds to wait (RATE_LIMITED)")
    session_id: str | None = None


class ErrorResponse(_Response):
    """Every 4xx/5xx answer."""

    error: ErrorBody


# ---------------------------------------------------------------- jobs
class GenerateRequest(SamplingParams):
    """Start a generation from a text prompt, from audio, or both (neither: unguided)."""

    prompt: str | None = Field(default=None, max_length=2000, description="Text description of the music")
    audio: str | None = Field(default=None, min_length=1, description=(
        "base64 WAV (any rate, 16/24/32-bit int or float, mono/stereo) to continue: the model continues its "
        "last `prompt_duration` seconds; the result starts with them and keeps the audio's format"),
        json_schema_extra=_AUDIO)
    duration: float = Field(gt=0, le=DURATION_CEILING, description="Seconds of audio to produce (prompt included)")
    prompt_duration: int | None = Field(default=None, ge=PROMPT_SECONDS_MIN, le=PROMPT_SECONDS_MAX,
                                        description="Seconds of `audio` the model continues (default 6)")
    model: str | None = Field(default=None, max_length=300, description="Model id from the server's allowlist")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed for a reproducible result")


class TextToAudioRequest(_Request):
    """Make a clip from text with the text-to-audio model (jerry: Stable Audio Open Small,
    44.1 kHz stereo), or, with `loop`, a loop of whole bars at the prompt's `NNNbpm`."""

    prompt: str = Field(min_length=1, max_length=2000, description="What the audio is (not blank)")
    negative_prompt: str | None = Field(default=None, max_length=2000, description="What to steer away from")
    steps: int | None = Field(default=None, ge=1, le=250, description="Sampler steps, an integer (default 8)")
    cfg_scale: float | None = Field(default=None, ge=0.0, le=20.0,
                                    description="Classifier-free guidance (default 1.0; a loop's 6.0)")
    seconds_total: int | None = Field(default=None, ge=1, description=(
        "Seconds of audio (default and maximum: the model's window, 11; more is clamped)"))
    seed: int | None = Field(default=None, ge=-1, le=2**63 - 1,
                             description="Seed for a reproducible result (-1 or absent: the server picks one)")
    sampler_type: str | None = Field(default=None, max_length=40,
                                     description="pingpong (default), euler, rk4 or dpmpp")
    model: str | None = Field(default=None, max_length=300,
                              description="A text-to-audio model id from the allowlist (default: the family's)")
    loop: bool = Field(default=False, description="Make a loop: the prompt must contain the tempo as NNNbpm")
    bars: int | Literal["auto"] | None = Field(default=None, description="A loop's bars: 1, 2, 4, 8 or auto "
                                                                       "(the most that fit; the default)")
    loop_type: Literal["auto", "drums", "instruments"] | None = Field(
        default=None, description="A loop's content: drums or instruments steer away from the other")


class JobLinks(_Response):
    self: str
    audio: str
    cancel: str


class JobAccepted(_Response):
    """A queued job (202)."""

    job_id: str
    status: Literal[JobStatusValue.QUEUED]
    position: int = Field(ge=0, description="1-based place among waiting jobs; 0: a worker already took it")
    estimated_seconds: float = Field(description="Rough seconds until the result")
    message: str = Field(description="What happens next, for people (TellUrStori's field)")
    created_at: str = Field(description="RFC 3339 UTC")
    links: JobLinks


class JobStatus(_Response):
    job_id: str
    kind: str = Field(description=_KIND_TEXT)
    status: JobStatusValue
    progress: float = Field(ge=0.0, le=1.0)
    position: int | None = Field(description="Place in the queue while queued")
    eta_seconds: float | None = Field(description="Rough seconds until done")
    error: ErrorBody | None
    audio_url: str | None = Field(description="Where to download the WAV once completed")
    session_id: str | None
    model: str
    seed: int | None = Field(description="The seed the generation uses")
    created_at: str
    started_at: str | None
    finished_at: str | None
    links: JobLinks


class JobList(_Response):
    jobs: list[JobStatus]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class JobListQuery(BaseModel):
    """Query of GET /jobs (query strings are text: numbers are parsed; unknown names are refused)."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=20, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=100_000)


# ---------------------------------------------------------------- prompt builder
class PromptBuildRequest(_Request):
    genre: str | None = Field(default=None, max_length=100)
    tempo: int | None = Field(default=None, ge=20, le=400, description="Beats per minute")
    mood: str | None = Field(default=None, max_length=100)
    instruments: list[Annotated[str, StringConstraints(max_length=100)]] | None = Field(
        default=None, max_length=20, description="Up to 20 instruments")
    artist_style: str | None = Field(default=None, max_length=100)


class PromptComponents(_Response):
    genre: str | None
    tempo: int | None
    mood: str | None
    instruments: list[str]
    artist_style: str | None


class PromptBuildResponse(_Response):
    structured_prompt: str = Field(description="Send it as `prompt` (jobs) or `description` (sessions)")
    components: PromptComponents


# ---------------------------------------------------------------- sessions
class SessionParams(SamplingParams):
    """The device's generation parameters; missing ones fall back to the session's, then defaults."""

    model_name: str | None = Field(default=None, max_length=300, description="Model id from the allowlist")
    prompt_duration: int | None = Field(default=None, ge=PROMPT_SECONDS_MIN, le=PROMPT_SECONDS_MAX)
    description: str | None = Field(default=None, max_length=2000, description="Text guidance; empty = none")
    seed: int | None = Field(default=None, ge=-1, le=SEED_MAX,
                             description="Same seed, input and parameters: the same audio; -1 or absent: the server "
                                         "picks one (0-99999) and reports it")
    duration: float | None = Field(default=None, gt=0.0, le=DURATION_CEILING,
                                   description="Seconds the model produces, its prompt included (default 30)")


class BangRequest(SessionParams):
    """``process_audio_request``: a new session continuing the FIRST `prompt_duration` seconds."""

    audio_data: str = Field(min_length=1, description="base64 WAV", json_schema_extra=_AUDIO)


class ContinueRequest(SessionParams):
    """``continue_music_request``: continue the LAST `prompt_duration` seconds."""

    audio_data: str | None = Field(default=None, min_length=1, json_schema_extra=_AUDIO,
                                   description="base64 WAV; absent: the session's current audio")


class RetryRequest(SessionParams):
    """``retry_music_request``: redo the last continue from the input it used."""


class AudioBody(_Request):
    """``update_cropped_audio``: the given audio becomes the session's current audio."""

    audio_data: str = Field(min_length=1, description="base64 WAV", json_schema_extra=_AUDIO)


class ImportBody(_Request):
    """A finished text-to-audio job whose result a session takes as its current audio."""

    job_id: str = Field(min_length=1, max_length=64, description="A completed `generate` job of the caller's")


class QueueStatus(payloads.QueueStatus):
    """The device protocol's ``queue_status`` payload, as the HTTP twins return it."""

    model_config = _Response.model_config


class SessionLinks(_Response):
    self: str
    audio: str
    job: str | None = None


class SessionAccepted(_Response):
    """A queued session generation (202); the twin of ``*_received`` + ``queue_status``."""

    session_id: str
    job_id: str
    kind: str = Field(json_schema_extra=_SESSION_KIND_SCHEMA)
    status: Literal[JobStatusValue.QUEUED]
    seed: int | None = Field(description="The seed the generation uses (given, or picked by the server)")
    queue_status: QueueStatus
    links: SessionLinks


class SessionMessage(_Response):
    """``update_cropped_audio_complete`` / ``cleanup_complete``."""

    message: str
    session_id: str
    links: SessionLinks | None = None


class SessionParameters(_Response):
    model_name: str | None
    prompt_duration: int | None
    top_k: int | None
    top_p: float | None
    temperature: float | None
    cfg_coef: float | None
    description: str | None


class SessionPoll(_Response):
    """The upstream poll route's answer, plus the session's model and parameters."""

    session_id: str
    generation_in_progress: bool
    progress: int = Field(ge=0, le=100, description="Percent, as progress_update")
    status: str = Field(description="idle | queued | running")
    error: str | None
    error_code: str | None
    audio_data: str | None = Field(description="base64 WAV of the current audio; null while generating "
                                               "(or with include_audio=false)")
    has_audio: bool
    queue_status: QueueStatus | None
    queue_position: int | None
    job_id: str | None
    model_name: str | None
    parameters: SessionParameters
    version: int
    seed: int | None = Field(description="The seed of the session's last generation")
    links: SessionLinks


class SessionPollQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_audio: bool = Field(default=True, description="false: leave audio_data null (download audio_url)")


# ---------------------------------------------------------------- listening and stations
_PROMPT = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class ListenLink(_Response):
    """A read-only listen link: the HLS playlist for any player, the page for browsers."""

    playlist_url: str = Field(description="Relative URL of the live HLS playlist")
    page_url: str = Field(description="Relative URL of the listen page (hls.js)")
    session_id: str


class StationRequest(_Request):
    """Start an endless generative station (send `prompt`, `genre` or `prompts`)."""

    prompt: _PROMPT | None = Field(default=None, description="What to play")
    genre: _PROMPT | None = Field(default=None, description="Same as prompt (a genre name is a fine prompt)")
    prompts: list[_PROMPT] | None = Field(default=None, min_length=1, max_length=32,
                                          description="A rotation of prompts (after `prompt`/`genre`, if any)")
    rotate_every_s: float | None = Field(default=None, ge=0.0, le=86_400.0,
                                         description="Seconds of music per prompt (0: never rotate; else >= 10)")
    temperature: Temperature | None = None
    top_k: TopK | None = None
    cfg_coef: CfgCoef | None = None
    model: str | None = Field(default=None, max_length=300, description="Model id from the allowlist")
    name: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, description="Shown on the video card of its RTMP outputs")
    record: bool = Field(default=False, description="Record the program into files of G4L_RECORDING_SECONDS "
                                                    "(GET /stations/{id}/recordings)")
    buffer_thresholds_s: dict[str, float] | Literal["long"] | None = Field(
        default=None, description="Lower bounds (seconds) of the HEALTHY, WARNING, CRITICAL and EMERGENCY states "
                                  "(`{healthy, warning, critical, emergency}`, strictly decreasing), or `\"long\"` "
                                  "(G4L_STATION_HEALTHY_S.. : 24/12/6/2 h). None: scaled to G4L_STATION_BUFFER_S "
                                  "(45 / 22.5 / 11.25 / 3.75 s). Generation rests while HEALTHY; DEPLETED goes off "
                                  "the air (a slate)")
    buffer_resume_s: float | None = Field(default=None, description="Buffer needed to go (back) on the air; "
                                                                     "default twice the emergency bound")
    chunk_seconds: float | None = Field(default=None, description="Seconds per generation (10 to "
                                                                   "G4L_STATION_MAX_CHUNK_S, e.g. 60, 300, 600); "
                                                                   "None: up to the model's window")
    transition: dict[str, Any] | None = Field(
        default=None, description="How a rotation hands over: `{kind: \"break\", seconds: N}` (N s of silence), "
                                  "`{kind: \"crossfade\", seconds: N}` or `{kind: \"continue\"}` (the default: "
                                  "the new prompt continues the music)")


class StationCreated(_Response):
    """A station that is starting (201)."""

    station_id: str
    playlist_url: str
    page_url: str
    status: Literal["starting"]


class StationOutput(_Response):
    """One RTMP(S) output of a station, as the packager that runs it last reported it.
    The stream key is never returned."""

    output_id: str
    url: str = Field(description="The server URL, without the stream key")
    visual: Literal["card", "image", "video"] = Field(description="What the video shows")
    state: Literal["connecting", "connected", "reconnecting", "stopped"]
    created: float
    connected_since: float | None = Field(description="When the current connection was made (epoch s)")
    uptime_s: float = Field(description="Seconds connected without a break (0 when not connected)")
    bitrate_kbps: float = Field(description="What ffmpeg sends, audio and video (0 when not connected)")
    sent_bytes: int = Field(description="Bytes sent over the current connection")
    reconnects: int = Field(description="Times a lost connection was made again")
    failed_attempts: int = Field(description="Connection attempts that failed")
    last_error: str | None = Field(description="ffmpeg's last complaint (stream key redacted)")
    last_error_at: float | None
    stopped_at: float | None


class StationStatus(_Response):
    """A station: what it plays, its buffer ahead of the listeners, its history."""

    station_id: str
    name: str | None
    playlist_url: str
    page_url: str
    status: str = Field(description="running | stopped")
    stopped_reason: str | None
    model: str | None
    temperature: float
    prompts: list[str]
    rotate_every_s: float
    transition: dict[str, Any] = Field(description="{kind: continue | break | crossfade, seconds}")
    current_prompt: str | None
    next_prompt: str | None = Field(description="The prompt after the current one (null: no rotation)")
    next_prompt_in_s: float | None = Field(description="Seconds of program until the next prompt is heard")
    generating_prompt: str | None
    buffered_seconds: float = Field(description="Audio generated and not yet played: stored and in memory")
    buffer_state: Literal["HEALTHY", "WARNING", "CRITICAL", "EMERGENCY", "DEPLETED"]
    buffer_state_since: float | None = Field(description="When the state last changed (epoch s)")
    buffer_thresholds_s: dict[str, float] = Field(description="The lower bound of each state: "
                                                              "{healthy, warning, critical, emergency}")
    buffer_resume_s: float = Field(description="Buffer needed to go back on the air after DEPLETED")
    chunk_seconds: float | None = Field(description="Seconds per generation (null: up to the model's window)")
    on_air: bool = Field(description="The program plays (false: before the start, or DEPLETED: the slate)")
    realtime_factor: float | None = Field(description="Audio seconds generated per wall second, last few chunks")
    target_buffer_seconds: float
    buffer_health: str = Field(description="starting | ok | low | empty | stopped (before buffer_state)")
    buffer_low: bool
    underruns: int
    played_seconds: float
    generated_seconds: float
    generations: int
    generating: bool
    progress: int
    listeners: int
    rotations: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    created: float
    outputs: list[StationOutput] = Field(description="Its RTMP(S) outputs (recently stopped ones too)")
    recording: bool = Field(description="Its program is being recorded")


class StationList(_Response):
    stations: list[StationStatus] = Field(description="The running stations this key started")


class StationHistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: float | None = Field(default=None, ge=0.0, description="Only samples after this time (epoch s)")


class BufferSample(_Response):
    """The station's buffer at one moment."""

    t: float = Field(description="When (epoch s)")
    buffered_s: float = Field(description="Seconds of music generated ahead of the listeners")
    state: str = Field(description="Its health state then")


class StationHistory(_Response):
    """A station's buffer over time (the dashboard's plot)."""

    station_id: str
    every_s: float = Field(description="Spacing of the samples (G4L_STATION_HISTORY_EVERY_S)")
    window_s: float = Field(description="How far back samples are kept (G4L_STATION_HISTORY_HOURS)")
    samples: list[BufferSample] = Field(description="Oldest first")


class StationStopped(_Response):
    station_id: str
    status: Literal["stopped"]


class OutputRequest(_Request):
    """Push the station to an RTMP(S) server: YouTube Live, Twitch, any RTMP ingest."""

    url: str = Field(min_length=1, max_length=1000, description="rtmp:// or rtmps:// server URL with its "
                                                              "application, e.g. rtmp://a.rtmp.youtube.com/live2")
    stream_key: str = Field(min_length=1, max_length=512, description="The platform's stream key (a secret: "
                                                                       "never returned or logged)")
    visual: str | None = Field(default=None, min_length=1, description=(
        "base64 of an image (PNG, JPEG, WebP) or a short video (MP4, WebM; up to G4L_RTMP_VISUAL_MAX_S) looped "
        "under the audio; none: a card with the station's name and the prompt playing"),
        json_schema_extra={"contentEncoding": "base64"})


class OutputCreated(_Response):
    """An output that is connecting (201)."""

    output_id: str
    station_id: str
    url: str = Field(description="The server URL, without the stream key")
    visual: Literal["card", "image", "video"]
    state: Literal["connecting"]


class OutputStopped(_Response):
    output_id: str
    station_id: str
    state: Literal["stopped"]


class Recording(_Response):
    """One finished recording of a station's program."""

    recording_id: str
    started_at: float = Field(description="Wall-clock time of its first sample (epoch s)")
    duration_s: float
    bytes: int
    media_type: Literal["audio/mp4"]
    url: str = Field(description="Relative URL of the file (Range supported)")


class RecordingList(_Response):
    recordings: list[Recording] = Field(description="Oldest first")


class CleanupRequest(_Request):
    """Stop every stream idle (no listener, no new audio) this long."""

    max_idle_s: float | None = Field(default=None, ge=0.0, le=10_000_000.0,
                                     description="Seconds (default G4L_HLS_IDLE_TIMEOUT_S)")


class CleanupResponse(_Response):
    stopped: list[str] = Field(description="Listen tokens of the streams stopped")
