"""Pydantic models of the HTTP bodies of listening streams and stations under ``/api/v1``
(``/listen``, ``/stations``, their outputs and recordings, stream cleanup).

The rules of :mod:`g4l.web.api.models` hold here too (strict requests that ignore unknown
fields, closed responses): these classes derive from its bases.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from g4l.web.api.models import _Request, _Response
from plugin_protocol.sampling import CfgCoef, Temperature, TopK

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
