"""jerry: text to audio with Stable Audio Open Small, on stable-audio-tools.

:func:`load_engine` loads a model the way stable-audio-tools does: a hub id through its
``get_pretrained_model`` (``model_config.json`` + ``model.safetensors`` from the Hugging
Face cache, or downloaded), a local directory in the same layout through
``create_model_from_config`` + ``load_ckpt_state_dict`` + ``copy_state_dict``.

:class:`StableAudioEngine` samples as ``generate_diffusion_cond`` does (the model's own
conditioner, conditioning inputs, timestep schedule with its sampling distribution shift,
batched CFG with rescaling, the library's samplers and its pretransform's decoder), with one
difference that makes batching exact: every item's noise (the starting latent and, for
``pingpong``, the fresh noise of each step) comes from its own ``torch.Generator`` seeded
with the item's seed, drawn on the CPU in the order the library draws from the global RNG
after ``torch.manual_seed(seed)``. So on the CPU a single item gives the very latent
``generate_diffusion_cond(seed=seed)`` gives (``tests/test_engine_stable_audio.py`` checks
it), a batch item the same as it would alone, and a seed the same audio on any device.
stable-audio-tools' ``sample_flow_pingpong`` draws its step noise with ``torch.randn_like``
on the global RNG for the whole batch at once, so it cannot give per-item seeds: the
``pingpong`` loop here is that sampler's update with per-item noise. The other samplers
(``euler``, ``rk4``, ``dpmpp``) draw nothing inside the loop and are the library's own.

torch and stable-audio-tools are imported when a model loads, never at import time.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from g4l.engine.base import Cancelled, ProgressCallback, TextToAudioParams
from g4l.engine.stable_audio_debug import resolve_model_paths, write_debug_checkpoint

__all__ = ["SAMPLERS", "StableAudioEngine", "batch_key", "load_engine", "validate_params",
           "write_debug_checkpoint", "Cancelled"]

log = structlog.get_logger(__name__)

#: The samplers of a rectified-flow model (``rf_denoiser``, ``rectified_flow``) in
#: stable-audio-tools; ``pingpong`` is the one Stable Audio Open Small is distilled for.
SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
#: The most steps one request may ask for (the small model uses 8).
MAX_STEPS = 500


def validate_params(params: TextToAudioParams, max_seconds: float) -> None:
    """Raise ``ValueError`` with a clear message when ``params`` cannot be generated."""
    if not isinstance(params, TextToAudioParams):
        raise ValueError(f"expected TextToAudioParams, got {type(params).__name__}")
    if not isinstance(params.prompt, str) or not params.prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if params.negative_prompt is not None and not isinstance(params.negative_prompt, str):
        raise ValueError("negative_prompt must be a string or None")
    if isinstance(params.steps, bool) or not isinstance(params.steps, int) or not 1 <= params.steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {params.steps!r}")
    if not _finite(params.cfg_scale) or params.cfg_scale < 0.0:
        raise ValueError(f"cfg_scale must be a number >= 0, got {params.cfg_scale!r}")
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {params.seed!r}")
    if not _finite(params.seconds_total) or not 0.0 < params.seconds_total <= max_seconds:
        raise ValueError(f"seconds_total must be > 0 and <= {max_seconds:g}, got {params.seconds_total!r}")
    if params.sampler_type not in SAMPLERS:
        raise ValueError(f"sampler_type must be one of {list(SAMPLERS)}, got {params.sampler_type!r}")


def batch_key(params: TextToAudioParams) -> tuple[int, float, str]:
    """What requests must share to run in one sampler pass (the sampler runs one schedule
    and one guidance scale for the whole batch). Prompts, negative prompts, seeds and
    lengths may differ."""
    return (params.steps, float(params.cfg_scale), params.sampler_type)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StableAudioEngine:
    """A loaded Stable Audio (``diffusion_cond``) model answering text-to-audio requests.

    Audio is float32 numpy, ``(channels, frames)`` at :attr:`sample_rate`. One generation
    runs at a time; concurrent calls wait their turn.
    """

    family = "stable_audio"

    def __init__(self, model: Any, model_config: dict[str, Any], model_id: str, device: str = "cpu") -> None:
        self._model = model.to(device).eval().requires_grad_(False)
        _one_row_at_a_time(self._model)
        pretransform: Any = getattr(self._model, "pretransform", None)
        if str(device).startswith("cpu") and getattr(pretransform, "model_half", False):
            # A config may ask for a half-precision VAE (a GPU memory saving); CPUs have no
            # fast float16 convolutions, so on the CPU it decodes in float32.
            pretransform.model_half = False
            pretransform.model.float()
        self._device = device
        self.model_id = model_id
        self.sample_rate = int(model_config["sample_rate"])
        self.channels = int(model_config.get("audio_channels", 2))
        #: Frames of one model pass (524288 for the small model).
        self.sample_size = int(model_config["sample_size"])
        #: The longest answer, in whole seconds (11.0 for the small model's 11.9 s window).
        self.max_seconds = float(math.floor(self.sample_size / self.sample_rate))
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The stable-audio-tools model (``ConditionedDiffusionModelWrapper``)."""
        return self._model

    def text_to_audio(self, params: TextToAudioParams, on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Generate ``params.seconds_total`` seconds from ``params.prompt``.

        Returns exactly ``round(seconds_total * sample_rate)`` frames, stereo, peak-normalised
        (the loudest sample at 1.0). ``on_progress(step, steps)`` is called after each
        sampler step; :class:`Cancelled` raised from it propagates. The same params (seed
        included) give the same audio.

        Raises:
            ValueError: params that cannot be generated (nothing runs).
        """
        return self.text_to_audio_batch([params], on_progress)[0]

    def text_to_audio_batch(self, params: Sequence[TextToAudioParams],
                            on_progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """Generate several requests in one sampler run; item ``i`` is what
        :meth:`text_to_audio` gives for ``params[i]`` (see the module docstring).

        All items must share :func:`batch_key` (steps, cfg_scale, sampler_type).
        ``on_progress`` counts sampler steps of the whole run.

        Raises:
            ValueError: an empty list, an invalid item, or items with different batch keys.
        """
        items = list(params)
        if not items:
            raise ValueError("text_to_audio_batch needs at least one request")
        for item in items:
            validate_params(item, self.max_seconds)
        keys = {batch_key(item) for item in items}
        if len(keys) > 1:
            raise ValueError(f"one batch needs the same steps, cfg_scale and sampler_type, got {sorted(keys)}")
        with self._lock:
            audio = self._generate(items, on_progress)
        out = []
        for item, clip in zip(items, audio, strict=True):
            clip = clip[:, :round(item.seconds_total * self.sample_rate)]
            peak = float(np.max(np.abs(clip))) if clip.size else 0.0
            out.append(np.ascontiguousarray(clip / peak if peak > 0 else clip, dtype=np.float32))
        return out

    def _generate(self, items: list[TextToAudioParams], on_progress: ProgressCallback | None) -> np.ndarray:
        import torch

        model = self._model
        steps, cfg_scale, sampler_type = batch_key(items[0])
        latent_len = self.sample_size // model.pretransform.downsampling_ratio \
            if model.pretransform is not None else self.sample_size
        generators = [torch.Generator(device="cpu").manual_seed(item.seed) for item in items]
        shape = (1, model.io_channels, latent_len)
        with torch.inference_mode():
            dtype = next(model.model.parameters()).dtype
            noise = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(self._device, dtype)
            conditioning = [{"prompt": item.prompt, "seconds_total": item.seconds_total} for item in items]
            cond_inputs = model.get_conditioning_inputs(self._condition(conditioning))
            cond_inputs = {k: v.type(dtype) if v is not None else v for k, v in cond_inputs.items()}
            cond_inputs.update(self._negative_inputs(items, cond_inputs))

            def step_noise(x: Any) -> Any:
                return torch.cat([torch.randn(shape, generator=g) for g in generators]).to(x.device, x.dtype)

            def callback(info: dict[str, Any]) -> None:
                if on_progress is not None:
                    on_progress(int(info["i"]) + 1, steps)

            latents, padding_mask = self._sample(noise, cond_inputs, conditioning, steps, cfg_scale,
                                                 sampler_type, step_noise, callback)
            audio = self._decode(latents, padding_mask)
            log.info("stable_audio_generated", model_id=self.model_id, batch=len(items), steps=steps,
                     sampler=sampler_type)
            return audio.float().cpu().numpy()

    def _condition(self, conditioning: list[dict[str, Any]]) -> dict[str, Any]:
        """The model's conditioner run on each item alone, joined into a batch: a matrix
        product over 1 row and over several may round differently (a 1e-7 difference in the
        seconds_total embedding), and an item must not depend on its batch."""
        import torch

        parts = [self._model.conditioner([item], self._device) for item in conditioning]
        return {key: tuple(torch.cat([part[key][i] for part in parts]) for i in range(2)) for key in parts[0]}

    def _negative_inputs(self, items: list[TextToAudioParams], cond_inputs: dict[str, Any]) -> dict[str, Any]:
        """The negative cross-attention conditioning: each negative prompt's own, and for an
        item without one the zeros the DiT's guidance uses when no negative is given."""
        import torch

        wanted = [i for i, item in enumerate(items) if item.negative_prompt is not None]
        if not wanted:
            return {}
        model = self._model
        negative = [{"prompt": items[i].negative_prompt, "seconds_total": items[i].seconds_total} for i in wanted]
        tensors = model.get_conditioning_inputs(self._condition(negative), negative=True)
        positive = cond_inputs["cross_attn_cond"]
        cond = torch.zeros_like(positive)
        cond[wanted] = tensors["negative_cross_attn_cond"].to(positive.dtype)
        # The DiT uses the positive mask for both halves of the guidance batch; the negative
        # mask is handed on as generate_diffusion_cond does.
        mask = cond_inputs["cross_attn_mask"].clone()
        mask[wanted] = tensors["negative_cross_attn_mask"].to(mask.dtype)
        return {"negative_cross_attn_cond": cond, "negative_cross_attn_mask": mask}

    def _sample(self, noise: Any, cond_inputs: dict[str, Any], conditioning: list[dict[str, Any]], steps: int,
                cfg_scale: float, sampler_type: str, step_noise: Any, callback: Any) -> tuple[Any, Any]:
        """stable-audio-tools' ``sample_diffusion`` for rectified-flow objectives (schedule,
        varlen masks, guidance arguments), with per-item step noise for ``pingpong``."""
        from stable_audio_tools.data.utils import (
            compute_effective_seq_len_from_conditioning,
            create_padding_mask_from_lengths,
        )
        from stable_audio_tools.inference import sampling

        model = self._model
        if model.diffusion_objective not in ("rf_denoiser", "rectified_flow"):
            raise ValueError(f"unsupported diffusion objective {model.diffusion_objective!r} "
                             "(Stable Audio Open Small is a rectified-flow model)")
        ratio = model.pretransform.downsampling_ratio if model.pretransform is not None else 1
        latent_len = noise.shape[-1]
        effective = None
        if model.use_effective_length_for_schedule:
            effective = compute_effective_seq_len_from_conditioning(conditioning, model.sample_rate, ratio,
                                                                    noise.device)
        padding_mask = None
        if model.mask_padding_attention:
            raw = compute_effective_seq_len_from_conditioning(conditioning, model.sample_rate, ratio, noise.device)
            if raw is not None:
                headroom = int(_HEADROOM_S * model.sample_rate / ratio)
                padding_mask = create_padding_mask_from_lengths((raw + headroom).clamp(max=latent_len).long(),
                                                                latent_len)
        sigmas = sampling.build_schedule(steps=steps, sigma_max=1.0, dist_shift=model.sampling_dist_shift,
                                         effective_seq_len=effective, fallback_seq_len=latent_len,
                                         include_endpoint=True, device=noise.device)
        kwargs = {**cond_inputs, "cfg_scale": cfg_scale, "batch_cfg": True, "rescale_cfg": True,
                  "padding_mask": padding_mask, "apg_scale": 1.0}
        if sampler_type == "pingpong":
            return _pingpong(model.model, noise, sigmas, step_noise, callback, **kwargs), padding_mask
        sampler = {"euler": sampling.sample_discrete_euler, "rk4": sampling.sample_rk4,
                   "dpmpp": sampling.sample_flow_dpmpp}[sampler_type]
        return sampler(model.model, noise, sigmas=sigmas, callback=callback, disable_tqdm=True, **kwargs), padding_mask

    def _decode(self, latents: Any, padding_mask: Any) -> Any:
        """The pretransform's decoder, as ``sample_diffusion`` decodes (padding zeroed)."""
        model = self._model
        if model.pretransform is None:
            return latents
        audio = model.pretransform.decode(latents.to(next(model.pretransform.parameters()).dtype))
        if padding_mask is not None:
            import torch

            audio_mask = padding_mask.unsqueeze(1).repeat_interleave(model.pretransform.downsampling_ratio, dim=-1)
            audio_mask = audio_mask[..., :audio.shape[-1]]
            audio_mask = torch.nn.functional.pad(audio_mask, (0, audio.shape[-1] - audio_mask.shape[-1]))
            audio = audio * audio_mask.to(audio.dtype)
        return audio


#: The DiT's per-item embeddings (one vector per batch row): run one row at a time.
_PER_ROW_EMBEDDINGS = ("to_timestep_embed", "to_global_embed")


def _one_row_at_a_time(model: Any) -> None:
    """Make the DiT's small per-item MLPs (timestep and global-conditioning embeddings, a
    ``(batch, features)`` input) run one row at a time, so that an item's numbers do not
    depend on its batch: BLAS computes a 1-row matrix product with another kernel than a
    several-row one, and the two round differently (1e-7, grown to 1e-6 in the audio). The
    cost is nil (a few vectors per step); the big products (``batch * 257`` token rows)
    already round the same for every batch size. The modules keep their weights and
    state-dict names: only the instances' ``forward`` is wrapped."""
    import torch

    dit = getattr(getattr(model, "model", None), "model", None)
    for name in _PER_ROW_EMBEDDINGS:
        module = getattr(dit, name, None)
        if module is None:
            continue
        forward = module.forward

        def per_row(x: Any, _forward: Any = forward) -> Any:
            if x.dim() != 2 or x.shape[0] == 1:
                return _forward(x)
            return torch.cat([_forward(row) for row in x.split(1)])

        module.forward = per_row


#: ``generate_diffusion_cond``'s ``duration_padding_sec``: valid latent frames past seconds_total.
_HEADROOM_S = 6.0


def _pingpong(model: Any, x: Any, sigmas: Any, step_noise: Any, callback: Any, **extra_args: Any) -> Any:
    """``stable_audio_tools.inference.sampling.sample_flow_pingpong``'s update, with the fresh
    noise of each step from ``step_noise(x)`` (per-item generators) instead of the global RNG."""
    import torch

    per_item = sigmas.dim() == 2
    sigmas = sigmas.to(x.device)
    for i in range(sigmas.shape[-1] - 1):
        if per_item:
            t_curr, t_next = sigmas[:, i].to(x.dtype), sigmas[:, i + 1].to(x.dtype)
            t_curr_b, t_next_b = t_curr.view(-1, 1, 1), t_next.view(-1, 1, 1)
            t_tensor = t_curr
        else:
            t_curr, t_next = sigmas[i].to(x.dtype), sigmas[i + 1].to(x.dtype)
            t_curr_b, t_next_b = t_curr, t_next
            t_tensor = t_curr * torch.ones((x.shape[0],), dtype=x.dtype, device=x.device)
        denoised = x - t_curr_b * model(x, t_tensor, **extra_args)
        callback({"x": x, "i": i, "t": t_curr, "sigma": t_curr, "sigma_hat": t_curr, "denoised": denoised})
        x = (1 - t_next_b) * denoised + t_next_b * step_noise(x)
    return x


def _load_directory(directory: Path) -> tuple[Any, dict[str, Any]]:
    from stable_audio_tools.models.factory import create_model_from_config
    from stable_audio_tools.models.utils import copy_state_dict, load_ckpt_state_dict

    config_path = directory / "model_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no model_config.json in {directory}")
    weights = next((directory / name for name in ("model.safetensors", "model.ckpt")
                    if (directory / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"no model.safetensors or model.ckpt in {directory}")
    config = json.loads(config_path.read_text())
    model = create_model_from_config(resolve_model_paths(config, directory))
    state = load_ckpt_state_dict(str(weights))
    # copy_state_dict skips what does not match with a print: refuse a partial model instead.
    own = model.state_dict()
    missing = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if missing:
        raise ValueError(f"{weights} does not fit {config_path}: {len(missing)} tensors missing or "
                         f"of another shape (first: {missing[:3]})")
    copy_state_dict(model, state)
    return model, config


def load_engine(model_id: str, source: str, device: str) -> StableAudioEngine:
    """Load a Stable Audio model with stable-audio-tools' own loaders.

    :param model_id: the id the engine answers to.
    :param source: a directory holding ``model_config.json`` + ``model.safetensors`` (or
        ``model.ckpt``), or a Hugging Face repo id (``get_pretrained_model``: the cache, or a
        download unless ``HF_HUB_OFFLINE=1``).
    :param device: a torch device (``cpu``, ``cuda``, ``cuda:1``).
    """
    from g4l.engine._compat import prepare_stable_audio_import

    prepare_stable_audio_import()
    directory = Path(source).expanduser()
    if directory.is_dir():
        model, config = _load_directory(directory)
    else:
        from stable_audio_tools.models.pretrained import get_pretrained_model

        model, config = get_pretrained_model(source)
    if config.get("model_type") != "diffusion_cond":
        raise ValueError(f"{source} is a {config.get('model_type')!r} model, not a text-conditioned "
                         "diffusion model ('diffusion_cond')")
    log.info("stable_audio_loaded", model_id=model_id, source=source, device=device)
    return StableAudioEngine(model, config, model_id, device)
