"""``MusicGenEngine``: the :class:`~g4l.engine.base.Engine` over an AudioCraft MusicGen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from g4l.engine._compat import prepare_audiocraft_import
from g4l.engine.base import Engine, GenerationParams, ProgressCallback

prepare_audiocraft_import()

import torch  # noqa: E402  (after the import shims)

import g4l.engine.memory as memory  # noqa: E402  (the modules, not the package: no import cycle)
import g4l.engine.rng as rng  # noqa: E402

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

_mkldnn_lock = threading.Lock()


def disable_mkldnn() -> None:
    """Turn PyTorch's oneDNN (mkldnn) backend off, process-wide.

    With it on, the EnCodec decoder's convolutions take 13-85 s on some output lengths on
    CPU (oneDNN re-plans per shape); off, the same decode takes well under a second. The
    flag is global, not per thread, so it is set once rather than toggled per call (a
    toggle would race between engines in different threads). CUDA is not affected.
    """
    with _mkldnn_lock:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a settable flag


class MusicGenEngine(Engine):
    """Runs one AudioCraft ``MusicGen`` model; one generation at a time.

    Args:
        model: a loaded ``audiocraft.models.MusicGen``.
        model_id: the id it was loaded from (defaults to ``model.name``).
        disable_onednn: turn oneDNN off when the model is on CPU (see :func:`disable_mkldnn`).
    """

    def __init__(self, model: MusicGen, model_id: str | None = None,
                 disable_onednn: bool = True) -> None:
        self._model = model
        self._model_id = model_id if model_id is not None else str(model.name)
        # AudioCraft keeps generation params and the progress callback on the model
        # object, so two generations at once would overwrite each other's settings.
        self._lock = threading.Lock()
        if disable_onednn and model.device.type == "cpu":
            disable_mkldnn()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def sample_rate(self) -> int:
        return int(self._model.sample_rate)

    @property
    def channels(self) -> int:
        return int(self._model.audio_channels)

    @property
    def frame_rate(self) -> float:
        """Model steps (token frames) per second of audio."""
        return float(self._model.frame_rate)

    @property
    def max_duration(self) -> float:
        """Seconds one LM pass produces; longer durations use AudioCraft's windowed extension."""
        return float(self._model.max_duration)

    @property
    def size(self) -> str:
        """``small`` / ``medium`` / ``large``, read off the language model's width (MusicGen's
        sizes: 1024, 1536, 2048; the tiny debug model counts as small)."""
        dim = int(getattr(self._model.lm, "dim", 0))
        return "small" if dim <= 1024 else "medium" if dim <= 1536 else "large"

    @property
    def model(self) -> MusicGen:
        """The wrapped AudioCraft model (diagnostics only: generating through it bypasses the lock)."""
        return self._model

    def continue_audio(self, prompt: np.ndarray, params: GenerationParams,
                       on_progress: ProgressCallback | None = None) -> np.ndarray:
        wav = self.prompt_tensor(prompt)
        prompt_seconds = wav.shape[-1] / self.sample_rate
        if prompt_seconds >= params.duration:
            raise ValueError(f"prompt ({prompt_seconds:.2f} s) must be shorter than the "
                             f"output duration ({params.duration:.2f} s)")
        with self._lock:
            return self._run(params, on_progress, lambda progress: self._model.generate_continuation(
                wav, self.sample_rate, descriptions=[params.text], progress=progress))

    def generate(self, params: GenerationParams,
                 on_progress: ProgressCallback | None = None) -> np.ndarray:
        with self._lock:
            return self._run(params, on_progress, lambda progress: self._model.generate(
                [params.text], progress=progress))  # type: ignore[list-item]  # None: unconditional

    def _run(self, params: GenerationParams, on_progress: ProgressCallback | None,
             call: Callable[[bool], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """Apply params, wire progress, run ``call`` and return its audio as numpy."""
        model = self._model
        model.set_generation_params(
            use_sampling=True, top_k=params.top_k, top_p=params.top_p,
            temperature=params.temperature, duration=params.duration, cfg_coef=params.cfg_coef)
        # AudioCraft calls the custom callback only when progress=True (else it prints).
        model.set_custom_progress_callback(on_progress)
        try:
            # Sampling draws from this generation's own generator (seeded, or from OS
            # entropy), never torch's global one: another model's generation in another
            # thread neither shares nor reseeds it (windowed extension included).
            with torch.inference_mode(), rng.own_generator(params.seed, model.device), memory.fails_alone():
                memory.apply_test_only_fault(1)
                out = call(on_progress is not None)
        finally:
            model.set_custom_progress_callback(None)
        if isinstance(out, tuple):  # (audio, tokens) when tokens are asked for; never here
            out = out[0]
        # [B=1, C, T] -> (C, T) float32, detached from torch's memory.
        return np.ascontiguousarray(out[0].detach().to("cpu", torch.float32).numpy())

    def prompt_tensor(self, prompt: np.ndarray) -> torch.Tensor:
        """Validate a ``(channels, frames)`` prompt and map it to the model's channels (on
        the model's device). :raises ValueError: for a prompt the model cannot take."""
        arr = np.asarray(prompt)
        if arr.ndim == 1:
            arr = arr[None, :]  # a bare mono signal
        if arr.ndim != 2:
            raise ValueError(f"prompt must be shaped (channels, frames), got {arr.shape}")
        if arr.shape[1] == 0:
            raise ValueError("prompt is empty")
        if arr.shape[0] > 8 * arr.shape[1]:
            raise ValueError(f"prompt looks transposed: shape {arr.shape} is (channels, frames)?")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError("prompt contains NaN or infinite samples")
        channels = self.channels
        if arr.shape[0] != channels:
            if channels == 1:
                arr = arr.mean(axis=0, keepdims=True)  # downmix
            elif arr.shape[0] == 1:
                arr = np.repeat(arr, channels, axis=0)  # mono to every channel
            else:
                raise ValueError(f"cannot map a {arr.shape[0]}-channel prompt to {channels} channels")
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self._model.device)


def load_engine(model_id: str, source: str, device: str) -> MusicGenEngine:
    """The MusicGen family's loader: a released AudioCraft checkpoint (a directory with
    ``state_dict.bin`` + ``compression_state_dict.bin``, or a hub repo id) through
    ``MusicGen.get_pretrained``."""
    from audiocraft.models import MusicGen

    return MusicGenEngine(MusicGen.get_pretrained(source, device=device), model_id=model_id)


def write_debug_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """The tiny MusicGen in the released layout (:func:`~g4l.engine.debug_model.save_debug_checkpoint`)."""
    from g4l.engine.debug_model import save_debug_checkpoint

    return save_debug_checkpoint(directory, seed=seed)
