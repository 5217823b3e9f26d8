"""Resolving what a client asked for into a :class:`~g4l.jobs.spec.GenerationSpec`, once.

The one place where defaults apply (the operator's model and prompt length, MusicGen's
sampling defaults), the model allowlist is checked and parameter ranges are enforced;
every job of every kind gets its spec from here, and nothing downstream re-derives one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from g4l.engine.families import MUSICGEN, models_of
from g4l.errors import InvalidRequest, ModelNotAllowed
from g4l.jobs import kinds
from g4l.jobs.kinds import KindName
from g4l.jobs.spec import Assembly, AudioFormat, GenerationSpec, Prompt, Sampling
from g4l.settings import Settings
from plugin_protocol.payloads import PARAM_FIELDS, SAMPLING_FIELDS

__all__ = ["PARAM_FIELDS", "SAMPLING_FIELDS", "SessionParams", "SpecResolver"]

#: A generation adds at least this much new music: a longer prompt is cut to
#: ``output_seconds - MIN_NEW_SECONDS`` (a 30 s prompt on a 30 s output would add nothing).
MIN_NEW_SECONDS = 5.0
#: Seeds the server picks are in 0..SEED_RANGE-1 (short enough to read off a screen).
SEED_RANGE = 100_000


def pick_seed(seed: int | None) -> int:
    """The seed a generation uses: the client's, or (none, or -1) one the server picks."""
    if seed is None or seed < 0:
        return secrets.randbelow(SEED_RANGE)
    return seed


class SessionParams(BaseModel):
    """What a device session remembers between requests (stored on it as JSON): a
    parameter a later request leaves out is taken from here."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    prompt_seconds: int
    sampling: Sampling = Sampling()
    description: str | None = None

    def as_fields(self) -> dict[str, Any]:
        """The parameters under the device protocol's names (poll replies)."""
        return {"model_name": self.model, "prompt_duration": self.prompt_seconds,
                **self.sampling.model_dump(), "description": self.description}


class SpecResolver:
    """Builds specs under the operator's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ------------------------------------------------------------ checks
    def model(self, requested: str | None) -> str:
        """The MusicGen to use: the one asked for, else the default; it must be allowed
        (another family's model cannot continue audio)."""
        model = (requested or "").strip() or self.settings.model_default
        allowed = models_of(MUSICGEN, self.settings.models, self.settings.model_path_map)
        if model not in allowed:
            raise ModelNotAllowed(f"model '{model}' is not available here; choose one of: " + ", ".join(allowed))
        return model

    def prompt_seconds(self, seconds: int | float | None) -> int:
        """A device prompt length within the operator's bounds (default when absent)."""
        value = self.settings.default_prompt_seconds if seconds is None else seconds
        lo, hi = self.settings.min_prompt_seconds, self.settings.max_prompt_seconds
        if not lo <= value <= hi:
            raise InvalidRequest(f"prompt_duration must be {lo}-{hi} seconds")
        return int(value)

    def output_seconds(self, duration: float | None) -> float:
        """Seconds a device generation's model produces (its prompt included): the
        client's ``duration``, else ``G4L_OUTPUT_SECONDS``."""
        output = float(duration or self.settings.output_seconds)
        if not MIN_NEW_SECONDS < output <= self.settings.max_generate_seconds:
            raise InvalidRequest(f"duration must be more than {MIN_NEW_SECONDS:g} and at most "
                                 f"{self.settings.max_generate_seconds:g} seconds")
        return output

    @staticmethod
    def sampling(given: Mapping[str, Any], previous: Sampling | None = None) -> Sampling:
        """Sampling from what was given, else ``previous``, else MusicGen's defaults."""
        base = (previous or Sampling()).model_dump()
        base.update({k: given[k] for k in SAMPLING_FIELDS if given.get(k) is not None})
        try:
            return Sampling(**base)
        except ValueError as exc:  # the payload models bound these already; this is the last word
            raise InvalidRequest(f"invalid sampling parameters: {exc}") from None

    # ------------------------------------------------------------ device sessions
    def session_params(self, given: Mapping[str, Any], previous: SessionParams | None) -> SessionParams:
        """The effective parameters of a bang/continue/retry: what the client sent, else
        the session's, else the defaults (``given`` uses the payload's field names)."""
        model = given.get("model_name") or (previous.model if previous else None)
        seconds = given.get("prompt_duration")
        if seconds is None and previous is not None:
            seconds = previous.prompt_seconds
        description = given["description"] if "description" in given else (
            previous.description if previous else None)
        return SessionParams(model=self.model(model), prompt_seconds=self.prompt_seconds(seconds),
                             sampling=self.sampling(given, previous.sampling if previous else None),
                             description=description or None)

    def session_spec(self, kind: KindName, params: SessionParams, fmt: AudioFormat, input_blob: str | None,
                     seed: int | None = None, output_seconds: float | None = None) -> GenerationSpec:
        """The spec of a device session's job: the model's ``output_seconds`` (default
        ``G4L_OUTPUT_SECONDS``, its prompt included) from a prompt window of the client's
        audio, returned in the client's format. The prompt is at most ``output_seconds -
        MIN_NEW_SECONDS`` long; ``seed`` as :func:`pick_seed` gives it."""
        shape = kinds.of(kind)  # which end of the input it continues, and how its result is made
        if shape.prompt_end is None or shape.assembly is None:
            raise InvalidRequest(f"'{kind}' is not a device session's kind")
        output = self.output_seconds(output_seconds)
        prompt_s = min(float(params.prompt_seconds), output - MIN_NEW_SECONDS)
        return GenerationSpec(model=params.model, sampling=params.sampling, description=params.description,
                              seed=pick_seed(seed), prompt=Prompt(seconds=prompt_s, end=shape.prompt_end),
                              output_seconds=output, input_blob=input_blob, output=fmt, assembly=shape.assembly)

    # ------------------------------------------------------------ jobs
    def generate_spec(self, *, duration: float, description: str | None, model: str | None,
                      given: Mapping[str, Any], seed: int | None, prompt_seconds: float | None,
                      fmt: AudioFormat | None, audio_seconds: float | None = None) -> GenerationSpec:
        """The spec of ``POST /api/v1/generate``: ``duration`` seconds from a text prompt,
        or continuing the last ``prompt_seconds`` of an uploaded audio (``fmt`` its format,
        ``audio_seconds`` its length; the prompt window itself is stored by the caller,
        ``prompt_blob``)."""
        s = self.settings
        if not 0 < duration <= s.max_generate_seconds:
            raise InvalidRequest(f"duration must be more than 0 and at most {s.max_generate_seconds:g} seconds")
        prompt = None
        if fmt is not None:
            prompt = Prompt(seconds=float(self.prompt_seconds(prompt_seconds)), end="tail")
            window = min(prompt.seconds, audio_seconds if audio_seconds is not None else prompt.seconds)
            if duration <= window:
                raise InvalidRequest(f"duration ({duration:g} s) must be longer than the audio prompt "
                                     f"({window:.2f} s)")
        return GenerationSpec(model=self.model(model), sampling=self.sampling(given), seed=pick_seed(seed),
                              description=(description or "").strip() or None, prompt=prompt,
                              output_seconds=float(duration), output=fmt or AudioFormat(subtype="PCM_16"))

    def station_spec(self, *, model: str, sampling: Sampling, description: str, previous_blob: str | None,
                     seed: int | None = None,
                     new_seconds: float, labels: dict[str, str | int | float]) -> GenerationSpec:
        """The spec of a station's next stretch: ``new_seconds`` of new audio continuing
        the end of ``previous_blob`` (from nothing for the first), as float at the model's
        rate, with a lead-in of one crossfade."""
        s = self.settings
        prompt = Prompt(seconds=s.station_prompt_seconds, end="tail") if previous_blob else None
        return GenerationSpec(model=model, sampling=sampling, description=description or None, prompt=prompt,
                              seed=pick_seed(seed), output_seconds=new_seconds + (prompt.seconds if prompt else 0.0),
                              input_blob=previous_blob, output=AudioFormat(subtype="FLOAT"),
                              assembly=Assembly.NEW, lead_in_s=s.hls_crossfade_ms / 1000.0 if prompt else 0.0,
                              labels=labels)
