"""jerry's HTTP answers (Stable Audio Open Small), as the gary4live device and gary4juce
read them from ``POST /audio/generate`` and ``/audio/generate/loop`` (``/generate`` and
``/generate/loop`` on the jerry port, 8005), with ``return_format: base64``.

Request fields are the upstream service's (``prompt`` with ``NNNbpm`` for a loop,
``steps``, ``cfg_scale``, ``seconds_total``, ``seed``, ``negative_prompt``,
``sampler_type``, ``model_type``, ``return_format``; a loop's ``bars`` and
``loop_type``); the server checks them (docs/jerry.md). These models describe what comes
back, for integrators and tests: extra fields are allowed (the server adds ``model``,
``job_id``...).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClipMetadata(_Answer):
    """A clip's ``metadata``. The device breaks without ``generation_time`` and ``realtime_factor``."""

    prompt: str
    negative_prompt: str | None
    steps: int = Field(ge=1, le=250)
    cfg_scale: float = Field(ge=0.0, le=20.0)
    seed: int = Field(ge=0)
    sample_rate: int
    duration_seconds: float = Field(gt=0.0)
    generation_time: float = Field(ge=0.0, description="Seconds the model ran")
    realtime_factor: float = Field(ge=0.0, description="Seconds of audio per second of generation")
    detected_bpm: int | None = Field(description="The prompt's NNNbpm")
    device: str = Field(description="cpu or cuda")


class LoopMetadata(ClipMetadata):
    """A loop's ``metadata``: the audio is exactly ``bars * 4 * 60 / bpm`` seconds."""

    bars: int
    loop_duration_seconds: float
    seconds_per_bar: float
    loop_type: str


class ClipAnswer(_Answer):
    """200: the WAV (44.1 kHz stereo 16-bit) as base64, and how it was made."""

    success: bool
    audio_base64: str = Field(min_length=1)
    metadata: ClipMetadata


class LoopAnswer(ClipAnswer):
    metadata: LoopMetadata


class Refusal(_Answer):
    """Any 4xx/5xx: ``error`` is always a plain string (a device prints it as it is)."""

    success: bool = False
    error: str
    code: str | None = None
