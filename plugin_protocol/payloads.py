"""Pydantic models of every payload on the wire, in both directions.

Client payloads are lenient where real clients differ (a Swift client sends numbers and
JSON strings; unknown fields are ignored) and strict where a bad value would hurt
(ranges, NaN, types). The JSON Schema in ``schema.json`` is generated from these models
(``python -m plugin_protocol.schema``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from plugin_protocol.sampling import CfgCoef, Temperature, TopK, TopP

#: Limits that are facts of the protocol (the device's slider is 1-15 s, the JUCE plugin's
#: presets go to 30, as the upstream server accepts).
PROMPT_SECONDS_MIN = 1
PROMPT_SECONDS_MAX = 30
#: The largest seed a client may send (-1, or none: the server picks one).
SEED_MAX = 2**63 - 1

#: The generation parameters of bang, continue and retry (a session remembers them).
PARAM_FIELDS = ("model_name", "prompt_duration", "top_k", "top_p", "temperature", "cfg_coef", "description")
#: Those of them that set the sampler.
SAMPLING_FIELDS = ("top_k", "top_p", "temperature", "cfg_coef")

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_strip_whitespace=False)


def _clean_session_id(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        if value and not _SESSION_ID.match(value):
            raise ValueError("session_id must be 1-64 letters, digits, '-' or '_'")
        return value or None
    return value


def _clean_model_name(value: object) -> object:
    # JSON strings arrive already unescaped; a dict payload built by a client that
    # escaped "/" twice still carries "\/", which is never part of a model id.
    if isinstance(value, str):
        value = value.strip().replace("\\/", "/")
        return value or None
    return value


SessionId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class GenerationParams(_Payload):
    """Optional sampling parameters shared by bang, continue and retry."""

    model_name: str | None = Field(default=None, max_length=300, description="Model id from the server's allowlist")
    prompt_duration: int | None = Field(
        default=None, ge=PROMPT_SECONDS_MIN, le=PROMPT_SECONDS_MAX, description="Seconds of prompt"
    )
    top_k: TopK | None = None
    top_p: TopP | None = None
    temperature: Temperature | None = None
    cfg_coef: CfgCoef | None = None
    description: str | None = Field(default=None, max_length=2000, description="Text guidance; empty = none")
    duration: float | None = Field(default=None, gt=0.0, le=3600.0,
                                   description="Seconds the model produces, its prompt included (default 30)")
    seed: int | None = Field(default=None, ge=-1, le=SEED_MAX,
                             description="Same seed, input and parameters: the same audio; -1 or absent: the server "
                                         "picks one (0-99999) and reports it")

    _model = field_validator("model_name", mode="before")(_clean_model_name)

    @field_validator("description", mode="before")
    @classmethod
    def _clean_description(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    def given(self) -> dict[str, object]:
        """Only the parameters the client actually sent (the rest fall back to the session's)."""
        return {k: getattr(self, k) for k in PARAM_FIELDS if getattr(self, k) is not None}


class ProcessAudioRequest(GenerationParams):
    """``process_audio_request`` (bang): continue the FIRST ``prompt_duration`` seconds."""

    audio_data: str = Field(min_length=1, description="base64 WAV")
    model_name: str = Field(max_length=300)
    prompt_duration: int = Field(ge=PROMPT_SECONDS_MIN, le=PROMPT_SECONDS_MAX)


class ContinueMusicRequest(GenerationParams):
    """``continue_music_request``: continue the LAST ``prompt_duration`` seconds."""

    session_id: SessionId | None = None
    audio_data: str | None = Field(default=None, description="base64 WAV; absent: the stored last output")

    _sid = field_validator("session_id", mode="before")(_clean_session_id)

    @field_validator("audio_data", mode="before")
    @classmethod
    def _empty_audio_is_absent(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class RetryMusicRequest(GenerationParams):
    """``retry_music_request``: redo the last continue from the input it used."""

    session_id: SessionId

    _sid = field_validator("session_id", mode="before")(_clean_session_id)


class UpdateCroppedAudio(_Payload):
    """``update_cropped_audio`` (crop): the given audio becomes the session's current audio."""

    session_id: SessionId | None = None
    audio_data: str = Field(min_length=1)

    _sid = field_validator("session_id", mode="before")(_clean_session_id)


class SessionRef(_Payload):
    """``cleanup_session_request`` and ``verify_session``."""

    session_id: SessionId

    _sid = field_validator("session_id", mode="before")(_clean_session_id)


class CheckoutRequest(SessionRef):
    """``checkout_request``: make a version of the session's history current."""

    version: int = Field(ge=1, le=2**53, description="A version number from the session's history")

    @field_validator("version", mode="before")
    @classmethod
    def _no_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("version must be a whole number")
        return value


class TransformAudioRequest(_Payload):
    """``transform_audio_request`` (terry): rewrite the session's audio (or the given audio)
    in a preset's style. Values are checked by the server with the errors the clients know
    (``Unknown variation: <name>``, ``Invalid solver``), so the strings pass through here."""

    session_id: SessionId | None = Field(default=None, description="absent/null: a new session")
    audio_data: str | None = Field(default=None, description="base64 WAV; absent: the session's current audio")
    variation: str | None = Field(default=None, max_length=200,
                                  description="A preset name (GET /variations); required unless custom_prompt")
    custom_prompt: str | None = Field(default=None, max_length=2000, description="Replaces the preset's text")
    flowstep: float | None = Field(default=None, description="0 < flowstep < 1 (absent: the preset's, 0.12)")
    solver: str | None = Field(default=None, max_length=40, description="euler (default, 25 steps) | midpoint (64)")
    steps: int | None = Field(default=None, description="Solver steps, a whole number 1-250 (absent: the solver's)")
    seed: int | None = Field(default=None, ge=-1, le=SEED_MAX,
                             description="-1 or absent: the server picks one and reports it")

    _sid = field_validator("session_id", mode="before")(_clean_session_id)

    @field_validator("audio_data", "custom_prompt", "variation", "solver", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("steps", mode="before")
    @classmethod
    def _whole_steps(cls, value: object) -> object:
        # A JSON 25.0 is a float: refused (pydantic's lax mode would take it as 25).
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError("steps must be a whole number from 1 to 250")
        return value

    @field_validator("flowstep", mode="before")
    @classmethod
    def _numeric_flowstep(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("flowstep must be a number")
        return value


class ProgressStatusRequest(SessionRef):
    """``request_progress_status``: sent when no progress arrived for 5 s."""

    last_progress: float | None = None


class BeginRestoreAudio(GenerationParams):
    """``begin_restore_audio``: start a chunked upload of a large current audio."""

    session_id: SessionId | None = None
    total_chunks: int | None = Field(default=None, ge=1, le=100_000)
    total_size: int | None = Field(default=None, ge=1)

    _sid = field_validator("session_id", mode="before")(_clean_session_id)


class AudioChunk(GenerationParams):
    """``audio_chunk``: one base64 fragment; fragments concatenate to the base64 WAV."""

    session_id: SessionId
    chunk: str = Field(min_length=1)
    chunk_index: int = Field(ge=0, le=100_000)
    total_chunks: int = Field(ge=1, le=100_000)
    is_last: bool = False

    _sid = field_validator("session_id", mode="before")(_clean_session_id)


# ---------------------------------------------------------------- server -> client


class ErrorPayload(_Payload):
    message: str
    code: str
    session_id: str | None = None


class Ack(_Payload):
    """``*_received`` acknowledgements, ``processing_started``."""

    session_id: str
    job_id: str | None = None
    seed: int | None = Field(default=None, description="The seed the generation uses (``*_received`` only)")


class ProgressUpdate(_Payload):
    progress: int = Field(ge=0, le=100)
    session_id: str


class AudioResult(_Payload):
    """``audio_processed`` / ``music_continued`` / ``music_retried``."""

    audio_data: str
    session_id: str


class QueueStatus(_Payload):
    message: str
    position: int
    total_queued: int
    estimated_seconds: float
    status: Literal["queued", "warming", "processing", "ready"]
    session_id: str


class Message(_Payload):
    """``update_cropped_audio_complete``, ``cleanup_complete``, ``restore_complete``."""

    message: str
    session_id: str


class SessionStatus(_Payload):
    """Our answer to ``verify_session`` and ``request_progress_status``."""

    session_id: str
    exists: bool
    status: str
    generation_in_progress: bool
    progress: int
    queue_position: int | None = None
    error: str | None = None
    model_name: str | None = None
    version: int = 0
    seed: int | None = Field(default=None, description="The seed of the session's last generation")


class VersionAudio(_Payload):
    """``undo_complete`` / ``redo_complete`` / ``checkout_complete`` / ``transform_undone``:
    the session's new current audio (byte for byte the version's file)."""

    audio_data: str
    session_id: str
    version: int = Field(description="The session's current version now")
    operation: str = Field(description="What made that version (bang, continue, retry, crop, upload, transform...)")


class VersionInfo(_Payload):
    """One version in ``history``."""

    version: int
    parent: int | None = Field(description="The version it was made from (null: a root)")
    operation: str
    created: float = Field(description="Unix time")
    duration: float | None = None
    params: dict[str, object] = Field(default_factory=dict, description="Model, seed, prompt window, sampling...")
    children: list[int] = Field(default_factory=list)
    redo_to: int | None = Field(default=None, description="Where redo from this version goes")
    pruned: bool = Field(default=False, description="Its audio was deleted by the history bound")
    current: bool = False


class HistoryPayload(_Payload):
    """``history``: the session's tree of versions, oldest first (no audio)."""

    session_id: str
    current: int | None
    versions: list[VersionInfo]


class TransformResult(AudioResult):
    """``audio_transformed``: the transformed take (the input's length and format)."""

    variation: str | None = Field(default=None, description="The preset it was asked for (null: a custom prompt)")


class ReadyForChunks(_Payload):
    session_id: str
    chunk_size: int


class ChunkReceived(_Payload):
    session_id: str
    chunk_index: int
    total_chunks: int
    received_chunks: int


class ChunksMissing(_Payload):
    session_id: str
    missing_chunks: list[int]
