"""``MelodyFlowEngine``: text-guided editing of audio (terry), per the MelodyFlow paper.

One edit: the input (any rate, mono or stereo) is resampled to 48 kHz stereo and encoded by
the VAE; its latent (normalised with the DiT's latent statistics) is inverted from t = 1
(data) down to ``flowstep`` with no text, then integrated back to t = 1 with
classifier-free guidance toward the text; the result is decoded, resampled back and cut to
the input's exact length. Inputs longer than the model's window are edited in overlapping
windows joined by an equal-power crossfade (:mod:`.windows`).
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import numpy as np
import torch

from g4l.audio import resample
from g4l.engine.base import ProgressCallback
from g4l.engine.melodyflow.checkpoint import HOP, SAMPLE_RATE
from g4l.engine.melodyflow.codec import posterior_sample
from g4l.engine.melodyflow.params import EditPlan, TransformParams, resolve
from g4l.engine.melodyflow.solver import PassConfig, run_pass
from g4l.engine.melodyflow.windows import join_windows, plan_windows

WINDOW_S = 30.0
OVERLAP_S = 4.0


class MelodyFlowEngine:
    """A loaded MelodyFlow (VAE + DiT + text conditioner). One edit at a time."""

    family = "melodyflow"
    sample_rate = SAMPLE_RATE
    channels = 2
    frame_rate = SAMPLE_RATE / HOP
    window_s = WINDOW_S
    overlap_s = OVERLAP_S

    @property
    def fade_samples(self) -> int:
        """The longest crossfade between windows (48 kHz samples): the minimum overlap."""
        return int(self.overlap_s * SAMPLE_RATE)

    def __init__(self, model_id: str, vae: Any, dit: Any, device: str) -> None:
        self.model_id = model_id
        self.vae = vae
        self.dit = dit
        self.device = device
        self._hop = int(vae.encoder.hop_length)
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- public API
    def transform(self, samples: np.ndarray, rate: int, params: TransformParams,
                  on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Edit ``samples`` (``(channels, frames)`` or ``(frames,)``, float, at ``rate``)
        toward ``params.text``.

        Returns:
            float32 ``(2, frames)`` at ``rate``, exactly the input's frame count.

        Raises:
            ValueError: bad audio (empty, not 1-2 channels, not finite), rate or params.
            Cancelled: raised by ``on_progress`` (called after each solver iteration with
                ``(done, total)``, all windows counted).
        """
        audio = _check_audio(samples, rate)
        resolve(params)  # refuse bad params before any work
        frames = audio.shape[1]
        stereo = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
        at48 = resample(stereo, rate, SAMPLE_RATE)
        pieces, spans = self.edit_windows(at48, params, on_progress)
        edited = join_windows(pieces, spans, at48.shape[1], fade=self.fade_samples)
        out = resample(edited, SAMPLE_RATE, rate)
        if out.shape[1] > frames:
            out = out[:, :frames]
        elif out.shape[1] < frames:
            out = np.pad(out, ((0, 0), (0, frames - out.shape[1])))
        return np.ascontiguousarray(out, dtype=np.float32)

    def edit_windows(self, stereo48: np.ndarray, params: TransformParams,
                     on_progress: ProgressCallback | None = None
                     ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """The windows of ``stereo48`` (``(2, frames)`` at 48 kHz) edited, not yet joined:
        ``(pieces, spans)``, ``spans`` being each window's ``(start, end)`` (for
        :func:`~g4l.engine.melodyflow.windows.join_windows` and the seam measure)."""
        plan = resolve(params)
        audio = _check_audio(stereo48, SAMPLE_RATE)
        if audio.shape[0] != 2:
            raise ValueError("edit_windows takes stereo audio")
        spans = plan_windows(audio.shape[1], int(self.window_s * SAMPLE_RATE), int(self.overlap_s * SAMPLE_RATE))
        with self._lock, torch.no_grad():  # not inference_mode: regularisation needs autograd
            return self._edit_windows(audio, spans, plan, on_progress), spans

    # ----------------------------------------------------------------- internals
    def _edit_windows(self, at48: np.ndarray, spans: list[tuple[int, int]], plan: EditPlan,
                      on_progress: ProgressCallback | None) -> list[np.ndarray]:
        """Each window of ``at48`` edited (48 kHz stereo, the window's length)."""
        seed = plan.seed if plan.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        total = len(spans) * plan.calls_per_window
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, total)

        texts = self._texts(plan.text)
        return [self._edit_one(at48[:, s:e], plan, texts, generator, tick) for s, e in spans]

    def _texts(self, text: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Text embeddings and additive masks: the edit's text, the unconditional (dropped)
        text, and the empty source description used while inverting."""
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

        provider = self.dit.condition_provider
        edit = ConditioningAttributes(text={"description": text})
        null = ClassifierFreeGuidanceDropout(p=1.0)([ConditioningAttributes(text={"description": text})])[0]
        source = ConditioningAttributes(text={"description": ""})
        guided, guided_mask = provider(provider.tokenize([edit, null]))["description"]
        src, src_mask = provider(provider.tokenize([source]))["description"]

        def additive(mask: torch.Tensor) -> torch.Tensor:
            return mask.float().log()[:, None, None, :]  # 0 keep, -inf drop

        return {"guided": (guided, additive(guided_mask)), "source": (src, additive(src_mask))}

    def _edit_one(self, window: np.ndarray, plan: EditPlan, texts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  generator: torch.Generator, tick: Any) -> np.ndarray:
        length = window.shape[1]
        padded = -(-length // self._hop) * self._hop  # whole latent frames
        audio = torch.from_numpy(np.pad(window, ((0, 0), (0, padded - length)))).to(self.device)[None]
        encoded = self.vae.encode(audio)[0].squeeze(1)  # (1, 2 * latent_dim, T)
        clean = self.dit.normalize(posterior_sample(encoded, generator))
        velocity = self._velocity_fn(plan.cfg, texts)
        inversion = PassConfig(plan.solver, plan.steps, plan.regularize, plan.regularize_iters, plan.lambda_kl)
        noisy = run_pass(clean, 1.0, plan.flowstep, inversion, velocity, False, tick, clean, generator)
        edited = run_pass(noisy, plan.flowstep, 1.0, PassConfig(plan.solver, plan.steps), velocity, True, tick)
        decoded = self.vae.decode(self.dit.denormalize(edited).unsqueeze(1), None)
        return decoded[0, :, :length].float().cpu().numpy()

    def _velocity_fn(self, cfg: float, texts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Any:
        dit = self.dit
        autocast = self.device.startswith("cuda")

        def velocity(x: torch.Tensor, t: float, guided: bool) -> torch.Tensor:
            b = x.shape[0]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                if not guided:
                    text, mask = texts["source"]
                    times = torch.full((b,), t, device=x.device)
                    return dit(x, times, text.expand(b, -1, -1), mask.expand(b, -1, -1, -1)).float()
                text, mask = texts["guided"]  # [edit text, dropped text]
                times = torch.full((2 * b,), t, device=x.device)
                both = dit(torch.cat([x, x]), times, text.repeat_interleave(b, dim=0),
                           mask.repeat_interleave(b, dim=0)).float()
                cond, uncond = both[:b], both[b:]
                return (1 + cfg) * cond - cfg * uncond

        return velocity


def _check_audio(samples: np.ndarray, rate: int) -> np.ndarray:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1000 <= rate <= 384000:
        raise ValueError(f"rate must be an integer sample rate in [1000, 384000], got {rate!r}")
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be (channels, frames) with 1 or 2 channels, got shape {audio.shape}")
    if audio.shape[1] == 0:
        raise ValueError("audio is empty")
    if not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or infinite samples")
    return audio
