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

from g4l.engine import families
from g4l.engine.families import MUSICGEN, STABLE_AUDIO, default_model, family_of, models_of
from g4l.errors import InvalidRequest, ModelNotAllowed, ModelUnavailable
from g4l.jobs import kinds
from g4l.jobs.kinds import KindName
from g4l.jobs.spec import Assembly, AudioFormat, Edit, GenerationSpec, Prompt, Sampling, TextToAudio
from g4l.services import presets
from g4l.settings import Settings
from plugin_protocol.payloads import PARAM_FIELDS, SAMPLING_FIELDS

__all__ = ["PARAM_FIELDS", "SAMPLING_FIELDS", "SessionParams", "SpecResolver"]

#: A generation adds at least this much new music: a longer prompt is cut to
#: ``output_seconds - MIN_NEW_SECONDS`` (a 30 s prompt on a 30 s output would add nothing).
MIN_NEW_SECONDS = 5.0
#: Seeds the server picks are in 0..SEED_RANGE-1 (short enough to read off a screen).
SEED_RANGE = 100_000


#: The longest text-to-audio prompt (and negative prompt) accepted, in characters.
TEXT_PROMPT_MAX = 2000
#: The samplers Stable Audio Open Small runs (stable-audio-tools' rectified-flow samplers).
SAMPLER_TYPES = ("pingpong", "euler", "rk4", "dpmpp")
#: Most sampler steps a text-to-audio request may ask for.
STEPS_MAX = 250
CFG_MAX = 20.0


def _is_int(value: Any) -> bool:
    """A JSON integer (``8``; not ``8.0``, not ``true``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


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
        s = self.settings
        model = (requested or "").strip() or default_model(MUSICGEN, s.models, s.default_model, s.model_path_map) \
            or s.model_default
        allowed = models_of(MUSICGEN, s.models, s.model_path_map)
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

    # ------------------------------------------------------------ terry (transform)
    def transform_model(self) -> str:
        """The MelodyFlow model a transform uses (the device names none): the family's
        allowed default. :raises ModelNotAllowed: the operator serves no MelodyFlow model."""
        s = self.settings
        model = families.default_model(families.MELODYFLOW, s.models, None, s.model_path_map)
        if model is None:
            raise ModelNotAllowed("terry (MelodyFlow) is not served here: the operator's G4L_MODELS allows no "
                                  "MelodyFlow model")
        return model

    @staticmethod
    def edit(*, variation: str | None, custom_prompt: str | None, flowstep: float | None, solver: str | None,
             steps: int | None) -> tuple[Edit, str]:
        """A transform's edit parameters and the text it moves toward. The variation must
        be a preset unless a custom prompt is given (which then replaces the preset's text);
        a flowstep left out is the preset's; ``steps`` left out is the solver's default."""
        name = (variation or "").strip() or None
        preset = presets.get(name) if name else None
        prompt = (custom_prompt or "").strip() or None
        if name is not None and preset is None:
            raise InvalidRequest(f"Unknown variation: {name}")
        if preset is None and prompt is None:
            raise InvalidRequest("variation is required (one of GET /variations), or a custom_prompt")
        chosen = (solver or "").strip().lower() or presets.DEFAULT_SOLVER
        if chosen not in ("euler", "midpoint"):
            raise InvalidRequest("Invalid solver: use euler or midpoint")
        step = preset.flowstep if preset is not None and flowstep is None else flowstep
        if step is None:
            step = presets.DEFAULT_FLOWSTEP
        if isinstance(step, bool) or not 0.0 < float(step) < 1.0:
            raise InvalidRequest(f"flowstep must be more than 0 and less than 1 (got {step!r})")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 250):
            raise InvalidRequest(f"steps must be a whole number from 1 to 250 (got {steps!r})")
        text = prompt if prompt is not None else preset.text  # type: ignore[union-attr]
        edit = Edit(variation=preset.name if preset is not None else None, flowstep=float(step),
                    solver=chosen, steps=steps)  # type: ignore[arg-type]
        return edit, text

    def transform_spec(self, edit: Edit, text: str, *, fmt: AudioFormat, input_blob: str, seconds: float,
                       seed: int | None) -> GenerationSpec:
        """The spec of a transform: the input (``input_blob``, ``seconds`` long, in ``fmt``)
        rewritten toward ``text``; the result has the input's length and format."""
        return GenerationSpec(model=self.transform_model(), seed=pick_seed(seed), description=text,
                              output_seconds=max(seconds, 1e-3), input_blob=input_blob, output=fmt,
                              assembly=Assembly.MODEL, edit=edit)

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

    # ------------------------------------------------------------ text to audio (jerry)
    def text_model(self, model_type: Any = None, finetune_repo: Any = None, model: Any = None) -> str:
        """The Stable Audio model a text-to-audio request runs on: ``model`` when named
        (an allowed model of the family), a fine-tune (``model_type: finetune``) only when
        its repo is an allowed model of the family, else the family's default model.

        :raises InvalidRequest: an unknown ``model_type``, a fine-tune or model not served here.
        :raises ModelUnavailable: the operator allows no Stable Audio model at all.
        """
        s = self.settings
        allowed = models_of(STABLE_AUDIO, s.models, s.model_path_map)
        if model is not None:
            if not isinstance(model, str) or model.strip() not in allowed:
                raise ModelNotAllowed(f"model {str(model)[:200]!r} is not a text-to-audio model served here; "
                                      "choose one of: " + (", ".join(allowed) or "none"))
            return model.strip()
        kind = "standard" if model_type in (None, "") else model_type
        if kind not in ("standard", "finetune"):
            raise InvalidRequest("model_type must be 'standard' or 'finetune'")
        if kind == "finetune":
            repo = finetune_repo.strip() if isinstance(finetune_repo, str) else ""
            if not repo:
                raise InvalidRequest("finetune_repo is required with model_type 'finetune'")
            if repo not in allowed:
                raise InvalidRequest(f"the fine-tune {repo[:200]!r} is not served here (not in this server's "
                                     "model allowlist, G4L_MODELS); use model_type 'standard'")
            return repo
        chosen = default_model(STABLE_AUDIO, s.models, None, s.model_path_map)
        if chosen is None:
            raise ModelUnavailable("jerry (Stable Audio Open Small) is not enabled on this server: the operator "
                                   f"allows no Stable Audio model (add {STABLE_AUDIO.default_model} or debug "
                                   "to G4L_MODELS)")
        return chosen

    def text_to_audio(self, *, prompt: Any, steps: Any = None, cfg_scale: Any = None, seconds_total: Any = None,
                      seed: Any = None, negative_prompt: Any = None, sampler_type: Any = None,
                      model_type: Any = None, finetune_repo: Any = None, model: Any = None,
                      default_cfg: float = 1.0, loop_seconds: float | None = None) -> GenerationSpec:
        """The spec of a text-to-audio job (jerry), from the request's values as JSON gave
        them (types are checked here, once, for every route):

        - ``prompt``: a non-blank string of at most :data:`TEXT_PROMPT_MAX` characters;
        - ``steps``: a JSON integer 1-250 (default 8; ``8.0`` is refused);
        - ``cfg_scale``: a number 0-20 (default ``default_cfg``: 1.0, a loop's 6.0);
        - ``seconds_total``: an integer >= 1, clamped to the model's window (11 s; the
          default); ``loop_seconds`` replaces it with a loop's exact length;
        - ``seed``: an integer; -1 or absent: the server picks one (the spec's seed);
        - ``negative_prompt``, ``sampler_type`` (:data:`SAMPLER_TYPES`), the model (:meth:`text_model`).

        :raises InvalidRequest: with the field and the rule it broke.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("prompt is required (a non-empty text describing the audio)")
        if len(prompt) > TEXT_PROMPT_MAX:
            raise InvalidRequest(f"prompt is too long ({len(prompt)} characters; at most {TEXT_PROMPT_MAX})")
        if steps is None:
            steps = TextToAudio().steps
        elif not _is_int(steps) or not 1 <= steps <= STEPS_MAX:
            raise InvalidRequest(f"steps must be an integer between 1 and {STEPS_MAX}")
        if cfg_scale is None:
            cfg_scale = default_cfg
        elif not _is_number(cfg_scale) or not 0.0 <= cfg_scale <= CFG_MAX:
            raise InvalidRequest(f"cfg_scale must be a number between 0 and {CFG_MAX:g}")
        window = STABLE_AUDIO.window_s
        if loop_seconds is not None:
            if not 0.0 < loop_seconds <= window:
                raise InvalidRequest(f"a loop must be more than 0 and at most {window:g} seconds long")
            seconds = float(loop_seconds)
        elif seconds_total is None:
            seconds = window
        else:
            if not _is_int(seconds_total) and not (_is_number(seconds_total) and float(seconds_total).is_integer()):
                raise InvalidRequest("seconds_total must be an integer number of seconds")
            if seconds_total < 1:
                raise InvalidRequest("seconds_total must be >= 1")
            seconds = min(float(seconds_total), window)  # clamped to what the model makes, as upstream
        if seed is not None and (not _is_int(seed) or not -1 <= seed <= 2**63 - 1):
            raise InvalidRequest("seed must be an integer (-1: the server picks one)")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InvalidRequest("negative_prompt must be a string")
        if negative_prompt is not None and len(negative_prompt) > TEXT_PROMPT_MAX:
            raise InvalidRequest(f"negative_prompt is too long (at most {TEXT_PROMPT_MAX} characters)")
        if sampler_type in (None, ""):
            sampler_type = TextToAudio().sampler_type
        elif sampler_type not in SAMPLER_TYPES:
            raise InvalidRequest(f"sampler_type must be one of: {', '.join(SAMPLER_TYPES)}")
        chosen = self.text_model(model_type, finetune_repo, model)
        if family_of(chosen, self.settings.model_path_map) is not STABLE_AUDIO:  # an allowlist typo, say
            raise InvalidRequest(f"model {chosen!r} cannot make audio from text")
        text = TextToAudio(negative_prompt=(negative_prompt or "").strip() or None, steps=steps,
                           cfg_scale=float(cfg_scale), sampler_type=sampler_type)
        return GenerationSpec(model=chosen, family=STABLE_AUDIO.name, seed=pick_seed(seed),
                              description=prompt.strip(), output_seconds=seconds,
                              output=AudioFormat(sample_rate=STABLE_AUDIO.sample_rate,
                                                 channels=STABLE_AUDIO.channels, subtype="PCM_16"),
                              text=text)
