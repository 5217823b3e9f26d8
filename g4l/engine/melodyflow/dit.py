"""MelodyFlow's flow model: a DiT predicting the flow's velocity on VAE latents.

Built on AudioCraft 1.3.0's transformer (``StreamingTransformer`` and its layers and
attention, whose parameter names the released checkpoint uses) with what MelodyFlow adds:

* a sinusoidal flow-step embedding, through a 2-layer MLP, added to the normalised input of
  the self- and cross-attention blocks of every layer;
* an all-zero key/value prepended in every attention (``add_zero_attn``): the unconditional
  branch of classifier-free guidance masks every text token, and the zero slot keeps that
  softmax defined;
* U-ViT long skips: the outputs of the first half's layers are concatenated (last in, first
  out) to the inputs of the second half's and projected back by ``skip_projections``, the
  projection picked by ``layer index % number of projections`` as the released model was
  trained;
* input/output projections between the 128-dim latent and the model dimension, the input
  rescaled to unit variance for every flow step and the output scaled by sqrt(2).

State-dict names (``timestep_embedder.mlp.{0,2}``, ``transformer.layers.N...``,
``transformer.skip_projections.N``, ``in_proj``, ``out_proj``, ``out_norm``,
``latent_mean``/``latent_std``, ``condition_provider...``) follow the released naming.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from audiocraft.modules.activations import get_activation_fn
from audiocraft.modules.conditioners import ConditionFuser, ConditioningProvider
from audiocraft.modules.transformer import (
    StreamingMultiheadAttention,
    StreamingTransformer,
    StreamingTransformerLayer,
    create_norm_fn,
    create_sin_embedding,
)
from torch import nn


class ZeroSlotAttention(StreamingMultiheadAttention):
    """AudioCraft's multi-head attention (same parameters), non-causal and non-streaming,
    with an optional all-zero key/value slot and an additive key mask ``(B, 1, 1, S)``."""

    def __init__(self, *args: Any, add_zero_attn: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.kv_repeat != 1:
            raise ValueError("MelodyFlow attention does not use kv_repeat")
        self.add_zero_attn = add_zero_attn
        if not self.custom:
            self.mha.add_zero_attn = add_zero_attn

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Any = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not self.custom:  # PyTorch's own MHA (checkpoints with custom=False)
            pad = None if attn_mask is None else attn_mask[:, 0, 0, :]
            out, _ = self.mha(query, key, value, key_padding_mask=pad, need_weights=False)
            return out, None
        dim = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if self.cross_attention:
            q = F.linear(query, w[:dim], None if b is None else b[:dim])
            k = F.linear(key, w[dim:2 * dim], None if b is None else b[dim:2 * dim])
            v = F.linear(value, w[2 * dim:], None if b is None else b[2 * dim:])
        else:
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        if self.qk_layer_norm:
            q, k = self.q_layer_norm(q), self.k_layer_norm(k)
        heads = self.num_heads
        q, k, v = (t.unflatten(-1, (heads, dim // heads)).transpose(1, 2) for t in (q, k, v))
        if self.rope is not None:
            q, k = self.rope.rotate_qk(q, k, start=0, time_dim=2)
        if self.attention_as_float32:
            q, k, v = q.float(), k.float(), v.float()
        if self.add_zero_attn:
            k = F.pad(k, (0, 0, 1, 0))
            v = F.pad(v, (0, 0, 1, 0))
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (1, 0))  # the zero slot is always visible
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.to(query.dtype).transpose(1, 2).flatten(2)
        return self.out_proj(x), None


class FlowTransformerLayer(StreamingTransformerLayer):
    """AudioCraft's transformer layer with the flow-step embedding and zero-slot attention."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 bias_ff: bool = True, bias_attn: bool = True, causal: bool = False,
                 past_context: int | None = None, custom: bool = False, memory_efficient: bool = False,
                 attention_as_float32: bool = False, qk_layer_norm: bool = False,
                 qk_layer_norm_cross: bool = False, cross_attention: bool = False,
                 layer_scale: float | None = None, rope: Any = None, attention_dropout: float | None = None,
                 kv_repeat: int = 1, norm: str = "layer_norm", add_zero_attn: bool = False,
                 device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        if causal:
            raise ValueError("the MelodyFlow DiT is not causal")
        super().__init__(d_model, num_heads, dim_feedforward, dropout, bias_ff=bias_ff, bias_attn=bias_attn,
                         custom=custom, memory_efficient=memory_efficient,
                         attention_as_float32=attention_as_float32, qk_layer_norm=qk_layer_norm,
                         qk_layer_norm_cross=qk_layer_norm_cross, cross_attention=cross_attention,
                         layer_scale=layer_scale, rope=rope, attention_dropout=attention_dropout,
                         kv_repeat=kv_repeat, norm=norm, device=device, dtype=dtype, **kwargs)
        attn = {"embed_dim": d_model, "num_heads": num_heads,
                "dropout": dropout if attention_dropout is None else attention_dropout, "bias": bias_attn,
                "custom": custom, "memory_efficient": memory_efficient,
                "attention_as_float32": attention_as_float32, "add_zero_attn": add_zero_attn,
                "device": device, "dtype": dtype}
        # Same parameters as the parent's attentions, with MelodyFlow's zero slot.
        self.self_attn = ZeroSlotAttention(rope=rope, qk_layer_norm=qk_layer_norm, **attn)
        if cross_attention:
            self.cross_attention = ZeroSlotAttention(cross_attention=True, qk_layer_norm=qk_layer_norm_cross,
                                                     **attn)

    def _attend(self, module: nn.Module, x: torch.Tensor, src: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return module(x, src, src, attn_mask=mask)[0]

    def forward(self, src: torch.Tensor, cross_attention_src: torch.Tensor | None = None,  # type: ignore[override]
                cross_attention_mask: torch.Tensor | None = None,
                timestep_embedding: torch.Tensor | None = None) -> torch.Tensor:
        temb = 0.0 if timestep_embedding is None else timestep_embedding
        x = src
        if self.norm_first:
            h = self.norm1(x) + temb
            x = x + self.layer_scale_1(self._attend(self.self_attn, h, h))
            if self.cross_attention is not None and cross_attention_src is not None:
                h = self.norm_cross(x) + temb
                x = x + self.layer_scale_cross(
                    self._attend(self.cross_attention, h, cross_attention_src, cross_attention_mask))
            x = x + self.layer_scale_2(self._ff_block(self.norm2(x)))
        else:
            h = x + temb
            x = self.norm1(x + self.layer_scale_1(self._attend(self.self_attn, h, h)))
            if self.cross_attention is not None and cross_attention_src is not None:
                # The released post-norm layer queries the cross-attention with the layer's
                # input (src), not x: kept as trained.
                h = src + temb
                x = self.norm_cross(x + self.layer_scale_cross(
                    self._attend(self.cross_attention, h, cross_attention_src, cross_attention_mask)))
            x = self.norm2(x + self.layer_scale_2(self._ff_block(x)))
        return x


class FlowTransformer(StreamingTransformer):
    """AudioCraft's transformer stack with U-ViT long skip connections."""

    def __init__(self, d_model: int, num_heads: int, num_layers: int, skip_connections: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(d_model, num_heads, num_layers, layer_class=FlowTransformerLayer, **kwargs)
        self.skip_connections = skip_connections
        if skip_connections:
            self.skip_projections = nn.ModuleList(
                nn.Linear(2 * d_model, d_model, bias=kwargs.get("bias_ff", True), device=kwargs.get("device"),
                          dtype=kwargs.get("dtype"))
                for _ in range((num_layers - 1) // 2))

    def forward(self, x: torch.Tensor, cross_attention_src: torch.Tensor | None = None,
                cross_attention_mask: torch.Tensor | None = None,
                timestep_embedding: torch.Tensor | None = None) -> torch.Tensor:
        _, steps, channels = x.shape
        if self.positional_embedding in ("sin", "sin_rope"):
            positions = torch.arange(steps, device=x.device).view(1, -1, 1)
            x = x + self.positional_scale * create_sin_embedding(positions, channels, self.max_period, x.dtype)
        n = len(self.layers)
        saved: list[torch.Tensor] = []
        for idx, layer in enumerate(self.layers):
            if self.skip_connections and idx > n / 2:
                x = torch.cat([x, saved.pop()], dim=-1)
                x = self.skip_projections[idx % len(self.skip_projections)](x)
            x = layer(x, cross_attention_src=cross_attention_src, cross_attention_mask=cross_attention_mask,
                      timestep_embedding=timestep_embedding)
            if self.skip_connections and idx < n / 2 - 1:
                saved.append(x)
        return x


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of the flow step (cos | sin, 256 wide) through a 2-layer MLP."""

    def __init__(self, dim: int, frequency_size: int = 256, bias: bool = False, device: Any = None) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim, bias=bias, device=device), nn.SiLU(),
                                 nn.Linear(dim, dim, bias=bias, device=device))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_size % 2:
            features = F.pad(features, (0, 1))
        return self.mlp(features.to(next(self.mlp.parameters()).dtype))


class FlowModel(nn.Module):
    """The DiT: ``velocity = model(z_t, t, text)`` on normalised latents ``(B, latent_dim, T)``."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __init__(self, condition_provider: ConditioningProvider, fuser: ConditionFuser, dim: int = 128,
                 latent_dim: int = 128, num_heads: int = 8, hidden_scale: float = 4, norm: str = "layer_norm",
                 norm_first: bool = False, bias_proj: bool = False, cfg_coef: float = 4.0,
                 device: Any = None, **transformer_kwargs: Any) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.cfg_coef = cfg_coef
        self.timestep_embedder = TimestepEmbedding(dim, bias=bias_proj, device=device)
        if "activation" in transformer_kwargs:
            transformer_kwargs["activation"] = get_activation_fn(transformer_kwargs["activation"])
        self.transformer = FlowTransformer(d_model=dim, num_heads=num_heads,
                                           dim_feedforward=int(hidden_scale * dim), norm=norm,
                                           norm_first=norm_first, device=device, **transformer_kwargs)
        self.condition_provider = condition_provider
        self.fuser = fuser
        self.out_norm: nn.Module | None = create_norm_fn(norm, dim, device=device) if norm_first else None
        self.in_proj = nn.Linear(latent_dim, dim, bias=bias_proj, device=device)
        self.out_proj = nn.Linear(dim, latent_dim, bias=bias_proj, device=device)
        # Per-channel statistics of the VAE latents: the flow runs on (z - mean) / (std + 1e-5).
        self.register_buffer("latent_mean", torch.zeros(1, latent_dim, 1, device=device))
        self.register_buffer("latent_std", torch.ones(1, latent_dim, 1, device=device))

    def forward(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None) -> torch.Tensor:
        """Velocity at ``z`` (``(B, C, T)``), flow step ``t`` (``(B,)``), text ``(B, S, dim)``;
        ``text_mask`` is additive, ``(B, 1, 1, S)`` (0 keep, -inf drop)."""
        scale = torch.sqrt(t ** 2 + (1 - t) ** 2).view(-1, 1, 1).to(z.dtype)
        x = self.in_proj((z / scale).transpose(1, 2))
        x = self.transformer(x, cross_attention_src=text, cross_attention_mask=text_mask,
                             timestep_embedding=self.timestep_embedder(t)[:, None, :].to(x.dtype))
        if self.out_norm is not None:
            x = self.out_norm(x)
        return self.out_proj(x).transpose(1, 2) * math.sqrt(2.0)

    def normalize(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.latent_mean) / (self.latent_std + 1e-5)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.latent_std + 1e-5) + self.latent_mean


#: ``transformer_lm`` keys the DiT reads; others in a released config (training-only) are ignored.
_MODEL_KEYS = ("dim", "latent_dim", "num_heads", "hidden_scale", "norm", "norm_first", "bias_proj", "cfg_coef")
_TRANSFORMER_KEYS = ("num_layers", "dropout", "bias_ff", "bias_attn", "past_context", "custom",
                     "memory_efficient", "attention_as_float32", "layer_scale", "positional_embedding",
                     "max_period", "positional_scale", "xpos", "skip_connections", "add_zero_attn",
                     "activation", "qk_layer_norm", "qk_layer_norm_cross", "attention_dropout", "kv_repeat")


def build_flow_model(cfg: Any) -> FlowModel:
    """The DiT of a training config (``xp.cfg``), with AudioCraft's text conditioners."""
    from audiocraft.models import builders
    from audiocraft.utils.utils import dict_from_config

    kwargs = dict_from_config(cfg.transformer_lm)
    model_kwargs = {k: kwargs[k] for k in _MODEL_KEYS if k in kwargs}
    transformer_kwargs = {k: kwargs[k] for k in _TRANSFORMER_KEYS if k in kwargs}
    transformer_kwargs["dropout"] = 0.0  # inference only
    fuser = builders.get_condition_fuser(cfg)
    condition_provider = builders.get_conditioner_provider(model_kwargs["dim"], cfg).to(cfg.device)
    transformer_kwargs["cross_attention"] = len(fuser.fuse2cond["cross"]) > 0
    return FlowModel(condition_provider, fuser, device=cfg.device, **model_kwargs, **transformer_kwargs)
