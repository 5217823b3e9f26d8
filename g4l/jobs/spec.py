"""The generation spec: everything a job's generation needs, resolved once.

The service layer (:mod:`g4l.services.specs`) builds a :class:`GenerationSpec` from what a
client sent, what its session remembers and the operator's settings; it is stored on the
job record. Workers, the HLS packager and the views read it and never re-derive a
default: the model, the sampling parameters, the seed, which part of which input the
model continues, how long its output is, the format of the result and how the result is
assembled all live here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from g4l import audio
from g4l.engine.base import GenerationParams
from plugin_protocol.sampling import CfgCoef, Temperature, TopK, TopP

#: The rate every MusicGen model works at; prompt windows are stored ready for it.
MODEL_RATE = 32_000
#: MusicGen's own sampling defaults (the engine's), the one place they are written.
_MUSICGEN = GenerationParams()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sampling(_Frozen):
    """How the model samples its tokens. Missing values are MusicGen's defaults (the
    engine's); the bounds are the sampling contract's (:mod:`plugin_protocol.sampling`),
    the same that every request model checks, so a value a request passed is never refused
    here."""

    top_k: TopK = _MUSICGEN.top_k
    top_p: TopP = _MUSICGEN.top_p
    temperature: Temperature = _MUSICGEN.temperature
    cfg_coef: CfgCoef = _MUSICGEN.cfg_coef


class Prompt(_Frozen):
    """Which part of the input audio the model continues."""

    seconds: float = Field(gt=0.0)
    #: ``head``: the first ``seconds`` (a bang); ``tail``: the last ``seconds``.
    end: Literal["head", "tail"] = "tail"

    def cut(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """The prompt window of ``samples`` (``(channels, frames)`` at ``rate``)."""
        if self.end == "head":
            return audio.head(samples, rate, self.seconds)
        return audio.tail(samples, rate, self.seconds)


class AudioFormat(_Frozen):
    """A result's shape: a client's results come back in the shape of its audio. A rate
    or channel count left out is the model's own."""

    sample_rate: int | None = Field(default=None, gt=0)
    channels: int | None = Field(default=None, ge=1)
    subtype: str = "PCM_16"

    def at(self, rate: int, channels: int) -> AudioFormat:
        """This format with what it leaves out taken from ``rate`` / ``channels``."""
        return AudioFormat(sample_rate=self.sample_rate or rate, channels=self.channels or channels,
                           subtype=self.subtype)


class Assembly(StrEnum):
    """How the result file is made from the model's output."""

    #: The model's output itself (its re-decoded prompt included), in the result format.
    MODEL = "model"
    #: The input minus its last ``prompt.seconds``, then the model's output: the take
    #: grows by ``output_seconds - prompt.seconds`` (continue, retry).
    SPLICE = "splice"
    #: Only what follows the prompt, plus ``lead_in_s`` of it to crossfade over (stations).
    NEW = "new"


class TextToAudio(_Frozen):
    """A text-to-audio generation's own parameters (jerry: Stable Audio Open Small). The
    prompt is the spec's ``description``, its seed the spec's ``seed``, its length the
    spec's ``output_seconds``."""

    negative_prompt: str | None = None
    steps: int = Field(default=8, ge=1, le=250)
    cfg_scale: float = Field(default=1.0, ge=0.0, le=20.0)
    sampler_type: str = "pingpong"


class Edit(_Frozen):
    """An edit's own parameters (terry: MelodyFlow rewrites the input toward a text). The
    text is the spec's ``description``; the input is the spec's ``input_blob``; the
    result keeps the input's length and format."""

    #: The preset it was asked for (``None``: a custom prompt only).
    variation: str | None = None
    flowstep: float = Field(default=0.12, gt=0.0, lt=1.0)
    solver: Literal["euler", "midpoint"] = "euler"
    #: ``None``: the solver's default.
    steps: int | None = Field(default=None, ge=1, le=250)


class GenerationSpec(_Frozen):
    """One generation, fully resolved (see the module docstring)."""

    model: str
    #: The model's family (:mod:`g4l.engine.families`): the job goes to a worker that loads it.
    family: str = "musicgen"
    sampling: Sampling = Sampling()
    #: Seeds the sampler for a reproducible result; ``None``: a random one.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    description: str | None = None
    #: ``None``: generate from nothing (text only, or unguided).
    prompt: Prompt | None = None
    #: Seconds the model produces, its prompt included.
    output_seconds: float = Field(gt=0.0)
    #: The stored audio the prompt is cut from (and a splice keeps the head of).
    input_blob: str | None = None
    #: A stored model-ready prompt window (GridFS), for jobs that keep theirs there.
    prompt_blob: str | None = None
    #: The result's format.
    output: AudioFormat = AudioFormat()
    assembly: Assembly = Assembly.MODEL
    #: Seconds of the prompt's end kept before the new audio (``Assembly.NEW``).
    lead_in_s: float = Field(default=0.0, ge=0.0)
    #: Free labels stored with the result (a station's prompt index and timeline).
    labels: dict[str, str | int | float] = Field(default_factory=dict)
    #: A text-to-audio model's parameters (jerry), ``None`` for other families.
    text: TextToAudio | None = None
    #: An edit's parameters (terry), ``None`` for other families.
    edit: Edit | None = None

    def summary(self) -> dict[str, Any]:
        """What a session version's record keeps of the generation that made it."""
        out: dict[str, Any] = {"model": self.model, "seed": self.seed, "description": self.description,
                               "output_seconds": self.output_seconds, **self.sampling.model_dump()}
        if self.prompt is not None:
            out["prompt_seconds"] = self.prompt.seconds
            out["prompt_end"] = self.prompt.end
        if self.text is not None:
            out.update(self.text.model_dump())
        if self.edit is not None:
            out.update(self.edit.model_dump())
        return out

    def engine_params(self, output_seconds: float | None = None) -> GenerationParams:
        """The engine's parameters; ``output_seconds`` overrides the output length (a
        prompt shorter than planned makes a shorter output)."""
        s = self.sampling
        return GenerationParams(top_k=s.top_k, top_p=s.top_p, temperature=s.temperature, cfg_coef=s.cfg_coef,
                                description=self.description, seed=self.seed,
                                duration=self.output_seconds if output_seconds is None else output_seconds)

    @property
    def new_seconds(self) -> float:
        """Seconds of audio after the prompt."""
        return self.output_seconds - (self.prompt.seconds if self.prompt else 0.0)


def model_prompt(samples: np.ndarray, rate: int) -> np.ndarray:
    """A prompt window at the model's rate (channels are the engine's business)."""
    return audio.resample(samples, rate, MODEL_RATE)


def prompt_wav(spec: GenerationSpec, samples: np.ndarray, rate: int) -> bytes:
    """The spec's prompt window of ``samples`` as a model-ready float WAV (CPU work: call
    it off an event loop)."""
    assert spec.prompt is not None
    return audio.encode_wav(model_prompt(spec.prompt.cut(samples, rate), rate), MODEL_RATE, "FLOAT")
