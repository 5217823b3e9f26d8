"""``BatchedEngine``: one job's :class:`~g4l.engine.base.Engine` over a model's shared
:class:`~g4l.engine.batched_musicgen.BatchedMusicGen` decode loop.

The job kinds call ``continue_audio``/``generate`` exactly as on a
:class:`~g4l.engine.musicgen.MusicGenEngine`; here the call submits a row to the loop that
every concurrent job of the same model shares, and blocks its own (job) thread until the
row's codes are decoded. Progress, ``Cancelled`` and any other exception raised by the
progress callback end this row only, between steps (the loop's rule).

Outputs past the model's window (AudioCraft's windowed extension) are not batched: they
run on the wrapped stock engine, one at a time, as before (and are not streamed).

With ``on_audio`` the job's audio is also handed out while it is generated
(:meth:`BatchedMusicGen.generate`, streamed generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from g4l.engine.base import AudioCallback, Engine, GenerationParams, ProgressCallback
from g4l.engine.batched_musicgen import BatchedMusicGen
from g4l.engine.musicgen import MusicGenEngine

#: Loop priority of an interactive job (a client waits on it): it joins before stations.
INTERACTIVE = 1
BACKGROUND = 0


@dataclass(eq=False)  # an engine is one job's: compared by identity
class BatchedEngine(Engine):
    """The engine a job sees when its worker batches.

    :param base: the model's stock engine (validation, metadata, windowed extension).
    :param shared: the model's decode loop, started (:meth:`BatchedMusicGen.start`).
    :param priority: the job's place in the loop's join queue (:data:`INTERACTIVE` first).
    :param on_audio: stream the job's audio to this while it is generated (``None``: not).
    :param chunk_s: with ``on_audio``, seconds of audio between two pieces.
    """

    base: MusicGenEngine
    shared: BatchedMusicGen
    priority: int = BACKGROUND
    on_audio: AudioCallback | None = None
    chunk_s: float = 1.0

    @property
    def model_id(self) -> str:
        return self.base.model_id

    @property
    def sample_rate(self) -> int:
        return self.base.sample_rate

    @property
    def channels(self) -> int:
        return self.base.channels

    @property
    def frame_rate(self) -> float:
        return self.base.frame_rate

    @property
    def max_duration(self) -> float:
        return self.base.max_duration

    def continue_audio(self, prompt: np.ndarray, params: GenerationParams,
                       on_progress: ProgressCallback | None = None) -> np.ndarray:
        if params.duration > self.base.max_duration:
            return self.base.continue_audio(prompt, params, on_progress)
        # The stock engine's checks and channel mapping, so both paths refuse the same prompts.
        wav = self.base.prompt_tensor(prompt)
        prompt_seconds = wav.shape[-1] / self.sample_rate
        if prompt_seconds >= params.duration:
            raise ValueError(f"prompt ({prompt_seconds:.2f} s) must be shorter than the "
                             f"output duration ({params.duration:.2f} s)")
        samples = wav.detach().to("cpu").numpy()
        return self.shared.generate(samples, params, on_progress, self.priority, on_audio=self.on_audio,
                                    chunk_s=self.chunk_s)

    def generate(self, params: GenerationParams, on_progress: ProgressCallback | None = None) -> np.ndarray:
        if params.duration > self.base.max_duration:
            return self.base.generate(params, on_progress)
        return self.shared.generate(None, params, on_progress, self.priority, on_audio=self.on_audio,
                                    chunk_s=self.chunk_s)
