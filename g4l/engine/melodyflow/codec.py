"""MelodyFlow's audio VAE: AudioCraft's SEANet EnCodec with snake activations and no quantizer.

The encoder outputs ``2 * latent_dim`` channels (mean | scale of a Gaussian posterior, 25
frames/s at 48 kHz stereo for the released model); the decoder takes ``latent_dim``. The
quantizer is AudioCraft's ``no_quant`` (``DummyQuantizer``, no parameters).

AudioCraft 1.3.0's SEANet only knows ``torch.nn`` activations, so the model is built with a
stand-in (``ELU``) and each activation is then replaced by a :class:`Snake1d` sized to its
channels, at the same position: the state-dict names (``encoder.model.N.alpha``,
``encoder.model.N.block.M.alpha``) are those of the released checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class Snake1d(nn.Module):
    """``x + sin(alpha * x)**2 / alpha`` with one learnt ``alpha`` per channel (``(1, C, 1)``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(self.alpha * x).pow(2) / (self.alpha + 1e-9)


def _in_channels(module: nn.Module) -> int | None:
    """Input channels of an AudioCraft streamable conv / LSTM, None for anything else."""
    conv = getattr(getattr(module, "conv", None), "conv", None) or getattr(getattr(module, "convtr", None),
                                                                            "convtr", None)
    if conv is not None:
        return int(conv.in_channels)
    lstm = getattr(module, "lstm", None)
    if lstm is not None:
        return int(lstm.input_size)
    return None


def _snakify(sequential: nn.Sequential, stand_in: type[nn.Module]) -> None:
    """Replace each ``stand_in`` activation by a Snake1d with the next layer's input width."""
    for idx, module in enumerate(sequential):
        if isinstance(module, stand_in):
            channels = _in_channels(sequential[idx + 1]) if idx + 1 < len(sequential) else None
            if channels is None:
                raise ValueError(f"cannot size the snake activation at position {idx}")
            sequential[idx] = Snake1d(channels)
        elif hasattr(module, "block") and isinstance(module.block, nn.Sequential):
            _snakify(module.block, stand_in)  # SEANet residual blocks


def _is_snake(name: object) -> bool:
    return isinstance(name, str) and name.lower() in ("snake", "snake1d")


def build_vae(cfg: Any) -> nn.Module:
    """The compression model of a training config (``xp.cfg``), AudioCraft's builders doing
    the work; a ``Snake`` activation is built as described in the module docstring."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(cfg)
    snake = _is_snake(cfg.seanet.get("activation"))
    if snake:
        OmegaConf.set_struct(cfg, False)
        cfg.seanet.activation = "ELU"  # stand-in, replaced below
        cfg.seanet.activation_params = {"alpha": 1.0}
    model: Any = builders.get_compression_model(cfg)
    if snake:
        _snakify(model.encoder.model, nn.ELU)
        _snakify(model.decoder.model, nn.ELU)
    return model.to(cfg.device).eval()


def match_weight_norm_names(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename weight-norm tensors between PyTorch's two spellings (``weight_g``/``weight_v``
    and ``parametrizations.weight.original0/1``) to the ones ``model`` uses, so a checkpoint
    saved with either loads strictly."""
    wanted = set(model.state_dict())
    pairs = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if key not in wanted:
            for old, param in pairs:
                for a, b in ((old, param), (param, old)):
                    if key.endswith("." + a) and key[: -len(a)] + b in wanted:
                        new = key[: -len(a)] + b
        out[new] = value
    return out


def posterior_sample(encoded: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A latent drawn from the encoder's ``mean | scale`` output (``(B, 2C, T)`` -> ``(B, C, T)``),
    standard deviation ``softplus(scale) + 1e-4``."""
    mean, scale = encoded.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + noise * (nn.functional.softplus(scale) + 1e-4)
