"""Request and reply bodies of the brief's own HTTP systems, in their field names: the
generative HLS daemon (``/generative/get_stream``), the realtime HLS API
(``/api/stream/*``, ``/api/cleanup``) and the TellUrStori service (``/api/v1/status``,
``/api/v1/download``, ``WS /ws``). Validated and documented like the rest of the API
(:mod:`g4l.web.api.routing`, :mod:`g4l.web.api.openapi`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from g4l.services.stations.genres import LEVEL_DEFAULT, LEVEL_MAX, LEVEL_MIN
from g4l.web.api.models import DURATION_CEILING, ErrorBody, _Request, _Response
from g4l.web.api.stream_models import StationStatus


# ---------------------------------------------------------------- generative HLS daemon
class GenreParams(_Request):
    genre: str = Field(min_length=1, max_length=200, description="What to play, e.g. `rock`")
    temperature: float = Field(default=LEVEL_DEFAULT, ge=LEVEL_MIN, le=LEVEL_MAX, description=(
        "That API's level, 0-10 (3: usual). Sampling temperature = 0.4 + 0.2 x level (3 -> 1.0)"))
    adaptive: bool = Field(default=False, description="Let the mood drift (a rotation of moods of the genre)")
    manual: bool = Field(default=False, description="Accepted; no effect beyond telling streams apart")
    model: str | None = Field(default=None, max_length=300, description="Model id from the allowlist")


class GetStreamRequest(_Request):
    """Ask for the endless stream of a genre (the same parameters share one station)."""

    params: GenreParams
    version: str | None = Field(default=None, max_length=20, description="Protocol version (\"1.0\")")


class StreamInfo(_Response):
    url: str = Field(description="Absolute HLS playlist URL (any HLS player: gstreamer hlsdemux, ffmpeg, hls.js)")
    page_url: str = Field(description="Absolute URL of a browser listen page")
    station_id: str
    genre: str
    temperature: float = Field(description="The sampling temperature the level maps to")
    reused: bool = Field(description="Whether an already running station of these parameters was returned")


class GetStreamResponse(_Response):
    """The genre's stream."""

    status: Literal["ok"]
    version: str
    stream: StreamInfo
    station: StationStatus


# ---------------------------------------------------------------- realtime HLS API
class StreamStartRequest(_Request):
    """Generate music from `text` and stream it live while it is made."""

    text: str = Field(max_length=2000, description="Description of the music (must not be blank)")
    language: str = Field(default="en", max_length=10, description="en | ru | kk")
    mode: str = Field(default="dynamic", max_length=20, description="dynamic")
    duration: float | None = Field(default=None, gt=0, le=DURATION_CEILING,
                                   description="Seconds to generate (default G4L_STREAM_SECONDS, 30)")
    model: str | None = Field(default=None, max_length=300, description="Model id from the allowlist")


class StreamStarted(_Response):
    """The stream is open; attach the player to `playlist_url` now."""

    session_id: str = Field(description="The stream session (also its job id in /api/v1/jobs)")
    playlist_url: str = Field(description="Relative HLS playlist URL")
    page_url: str = Field(description="Relative URL of a browser listen page")
    status: Literal["processing"]


class StreamStatus(_Response):
    """A stream session: processing while generating, ready once the whole result is stored."""

    session_id: str
    status: Literal["processing", "ready", "failed"]
    playlist_url: str = Field(description="Absolute HLS playlist URL")
    page_url: str = Field(description="Absolute URL of a browser listen page")
    mp4_url: str | None = Field(description="Absolute URL of the whole result as MP4 (AAC), once ready")
    wav_url: str | None = Field(description="Absolute URL of the whole result as WAV, once ready")
    progress: float = Field(ge=0.0, le=1.0)
    error: ErrorBody | None
    text: str
    language: str
    created_at: str
    finished_at: str | None


class StreamCleanupRequest(_Request):
    session_id: str = Field(min_length=1, max_length=64)


class StreamCleanedUp(_Response):
    """The stream is stopped and forgotten (the WAV stays with its job until retention)."""

    session_id: str
    status: Literal["cleaned"]
    canceled: bool = Field(description="Whether a generation still running was canceled")


# ---------------------------------------------------------------- TellUrStori
class StoriStatus(_Response):
    """A job in the TellUrStori service's shape."""

    job_id: str
    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    progress: float = Field(ge=0.0, le=1.0)
    message: str
    created_at: str
    started_at: str | None
    completed_at: str | None
    error_message: str | None
    prompt: str | None
    duration: float | None = Field(description="Seconds requested (the result's length once completed)")
    audio_url: str | None = Field(description="`/api/v1/download/<job_id>` once completed")
    file_size: int | None
    actual_duration: float | None
