"""The engine contract: generation parameters, the ``Engine`` interface and cancellation.

This module imports neither torch nor AudioCraft, so the web side can use these types
without paying for the model stack.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``on_progress(generated_steps, total_steps)``: called after each model step. Raising
#: :class:`Cancelled` from it stops the generation.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PartialAudio:
    """A piece of a generation's audio, handed out while it runs (streamed generation).

    :param samples: ``(channels, frames)`` float32 at ``sample_rate``: the output's samples
        ``start`` to ``start + frames`` (the output as the engine returns it, prompt included).
    :param prompt_samples: where the (re-decoded) prompt ends in the output (0 without one).
    :param final: the last piece: the rest of the final, whole decode.
    """

    samples: np.ndarray
    start: int
    sample_rate: int
    prompt_samples: int = 0
    final: bool = False

    @property
    def end(self) -> int:
        return self.start + int(self.samples.shape[1])


#: Called with each :class:`PartialAudio` of a streamed generation, in order, from the
#: job's own thread; the final WAV is still the engine call's return value.
AudioCallback = Callable[[PartialAudio], None]


class Cancelled(Exception):
    """Raised by an ``on_progress`` callback to stop a generation between model steps.

    The engine lets it propagate unchanged to the caller of ``continue_audio``/``generate``.
    """


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. Defaults are MusicGen's own.

    Attributes:
        top_k: sample among the ``top_k`` most likely tokens (0: no top-k filter).
        top_p: nucleus sampling threshold; 0 means "use top_k instead".
        temperature: softmax temperature (> 0).
        cfg_coef: classifier-free guidance strength.
        description: text guiding the style; ``None`` or blank means unguided.
        duration: seconds of the whole output, prompt included.
        seed: seeds torch's RNG for a reproducible result; ``None`` for a random one.
    """

    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    description: str | None = None
    duration: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        # Fail here with a clear message rather than deep inside the sampler.
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not _finite(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p!r}")
        if not _finite(self.temperature) or self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not _finite(self.cfg_coef) or self.cfg_coef < 0.0:
            raise ValueError(f"cfg_coef must be >= 0, got {self.cfg_coef!r}")
        if not _finite(self.duration) or self.duration <= 0.0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.description is not None and not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {type(self.description).__name__}")

    @property
    def text(self) -> str | None:
        """The description to condition on: ``None`` when absent or blank (unguided)."""
        if self.description is None or not self.description.strip():
            return None
        return self.description.strip()


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Engine(abc.ABC):
    """A loaded generative model that continues or generates audio.

    Audio is ``float32`` numpy, shape ``(channels, frames)``, at :attr:`sample_rate`.
    Implementations run one generation at a time; concurrent calls wait their turn.
    """

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """The id this engine was loaded from (allowlist id, HF id or local path)."""

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Sample rate of prompts and outputs (32000 for MusicGen)."""

    @property
    @abc.abstractmethod
    def channels(self) -> int:
        """Channel count of the outputs (1 or 2)."""

    @abc.abstractmethod
    def continue_audio(self, prompt: np.ndarray, params: GenerationParams,
                       on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Continue ``prompt`` up to ``params.duration`` seconds.

        Args:
            prompt: ``(channels, frames)`` float32 at :attr:`sample_rate`; mono or stereo,
                converted to :attr:`channels`. Must be shorter than ``params.duration``.
            params: sampling parameters.
            on_progress: see :data:`ProgressCallback`; may raise :class:`Cancelled`.

        Returns:
            The full output, ``(channels, frames)``, INCLUDING the prompt as re-decoded by
            the model (what AudioCraft's ``generate_continuation`` returns).

        Raises:
            Cancelled: raised by ``on_progress``.
            ValueError: a prompt of the wrong shape, empty, or not shorter than duration.
        """

    @abc.abstractmethod
    def generate(self, params: GenerationParams,
                 on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Generate ``params.duration`` seconds from nothing (text-guided or unconditional)."""


@dataclass(frozen=True)
class TextToAudioParams:
    """One text-to-audio generation (jerry, Stable Audio Open Small).

    Attributes:
        prompt: the text the audio follows.
        negative_prompt: what to steer away from (``None``: nothing).
        steps: sampler steps.
        cfg_scale: classifier-free guidance strength.
        seed: the sampler's seed (resolved by the caller: never random here).
        seconds_total: seconds of the answer (the model renders its whole window; the
            answer is trimmed to this).
        sampler_type: the sampler's name in stable-audio-tools (``pingpong`` for the small model).
    """

    prompt: str
    negative_prompt: str | None = None
    steps: int = 8
    cfg_scale: float = 1.0
    seed: int = 0
    seconds_total: float = 11.0
    sampler_type: str = "pingpong"


#: The solvers of an edit and their default step counts (MelodyFlow's released settings).
EDIT_SOLVER_STEPS: dict[str, int] = {"euler": 25, "midpoint": 64}


@dataclass(frozen=True)
class TransformParams:
    """One edit of existing audio toward a text (terry, MelodyFlow).

    Attributes:
        text: the style to move toward (a preset's text, or a custom prompt).
        flowstep: how far back (0 < flowstep < 1) the input is inverted before it is
            integrated forward again toward ``text``: larger keeps less of the input.
        solver: ``euler`` (with regularised inversion) or ``midpoint``.
        steps: solver steps; ``None``: the solver's default (:data:`EDIT_SOLVER_STEPS`).
        cfg: classifier-free guidance toward ``text``.
        seed: seeds the edit's own generator; ``None``: a random one.
        regularize, regularize_iters, lambda_kl: the regularised euler inversion.
    """

    text: str
    flowstep: float = 0.12
    solver: str = "euler"
    steps: int | None = None
    cfg: float = 4.0
    seed: int | None = None
    regularize: bool = True
    regularize_iters: int = 2
    lambda_kl: float = 0.2

    def __post_init__(self) -> None:
        if not _finite(self.flowstep) or not 0.0 < self.flowstep < 1.0:
            raise ValueError(f"flowstep must be in (0, 1), got {self.flowstep!r}")
        if self.solver not in EDIT_SOLVER_STEPS:
            raise ValueError(f"solver must be one of {sorted(EDIT_SOLVER_STEPS)}, got {self.solver!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    @property
    def solver_steps(self) -> int:
        """The steps the solver takes."""
        return self.steps if self.steps is not None else EDIT_SOLVER_STEPS[self.solver]
