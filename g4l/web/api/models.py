"""Pydantic models of every HTTP request and response body under ``/api/v1``.

The same classes validate requests and generate the OpenAPI document
(:mod:`g4l.web.api.openapi`), so the document cannot drift from what the server accepts.
Request models are strict (a number sent as a string is a 400, not silently converted:
HTTP clients are ours to define, unlike the device protocol's lenient payloads) and
ignore unknown fields.

The bodies of the listening streams and stations are in :mod:`g4l.web.api.stream_models`.
"""

from __future__ import annotations

from typing import Annotated, Literal

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
