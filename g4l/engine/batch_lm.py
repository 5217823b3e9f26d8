"""``BatchedLM``: AudioCraft's MusicGen language model, run over rows at different positions.

AudioCraft's ``LMModel`` decodes one batch whose rows all sit at the same position and
start together. This module runs the *same modules and weights* (``lm.emb``, each
``StreamingTransformerLayer``'s norms, projections, feed-forward block and layer scales,
``lm.out_norm``, ``lm.linears``) with its own attention step over a :class:`KVCache`:
every half-row has its own position (its sinusoidal embedding and a mask over the keys it
may see), so rows of different prompt lengths decode in one forward pass.

Two attention kernels:

* ``'math'`` (default): ``softmax(q k^T / sqrt(d) + mask) v`` with explicit matmuls. Masked
  keys get exactly zero weight, so a row's result does not depend on how many keys its
  batch mates add: with the row padding of :class:`~g4l.engine.batching.DecodeLoop` a row's
  logits are bit-for-bit the same alone or in any batch (measured on CPU).
* ``'sdpa'``: ``torch.nn.functional.scaled_dot_product_attention`` (flash/efficient kernels
  on CUDA). With one row and no padding it calls SDPA exactly as AudioCraft does, which is
  how the tests show the step reproduces stock ``generate`` bit for bit; across batches it
  differs in the last bits (the kernel blocks by key length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from g4l.engine.kv_cache import KVCache, round_up

if TYPE_CHECKING:
    from audiocraft.models.lm import LMModel

ATTENTION_KINDS = ("math", "sdpa")
#: Self-attention reads keys in whole blocks of this many positions (see ``forward``).
KEY_BLOCK = 64


class UnsupportedModel(ValueError):
    """The LM uses a feature the batched step does not implement (rope, prepend fusing...)."""


@dataclass
class RowCondition:
    """A row's text condition, ready for cross-attention.

    :param keys: per layer, the keys of the condition, ``[2, heads, length, head_dim]``
        (conditional half, then the unconditional half).
    :param values: per layer, the values, same shape.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        """Positions of the condition (0 when the model has no cross-attention)."""
        return int(self.keys[0].shape[2]) if self.keys else 0


def _attention_parts(attn: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.nn.Module]:
    """(in_proj weight, in_proj bias, out_proj) of an AudioCraft ``StreamingMultiheadAttention``,
    whichever implementation it wraps (its own, or ``nn.MultiheadAttention``)."""
    if attn.custom:
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
    return attn.mha.in_proj_weight, attn.mha.in_proj_bias, attn.mha.out_proj


Part = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _direct(module: torch.nn.Module) -> Part:
    """``module``'s forward without ``nn.Module.__call__`` (hooks, dispatch: about 6 us a
    call, some 40 calls a step, a fifth of the tiny model's step on CPU), where that is the
    very function its ``forward`` calls: the same kernels with the same arguments, so the
    same bits. Identity and eval-mode dropout are skipped; any other module is called."""
    kind = type(module)  # exact types: a subclass may have a forward of its own
    if kind is torch.nn.Identity or (kind is torch.nn.Dropout and not module.training):
        return _identity
    if isinstance(module, torch.nn.LayerNorm) and kind is torch.nn.LayerNorm:
        return partial(F.layer_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                       bias=module.bias, eps=module.eps)
    if isinstance(module, torch.nn.Linear) and kind is torch.nn.Linear:
        return partial(F.linear, weight=module.weight, bias=module.bias)
    return module


def _direct_embedding(module: torch.nn.Module) -> Part:
    """An embedding's lookup without ``__call__``, when its forward is ``nn.Embedding``'s
    (AudioCraft's ``ScaledEmbedding`` only adds an optimiser setting)."""
    if isinstance(module, torch.nn.Embedding) and type(module).forward is torch.nn.Embedding.forward:
        return partial(F.embedding, weight=module.weight, padding_idx=module.padding_idx, max_norm=module.max_norm,
                       norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq,
                       sparse=module.sparse)
    return module


@dataclass(frozen=True)
class _LayerParts:
    """A ``StreamingTransformerLayer``'s parts as :func:`_direct` callables."""

    norm1: Part
    norm2: Part
    norm_cross: Part
    scale1: Part
    scale2: Part
    scale_cross: Part
    self_out: Part
    cross_out: Part
    ff: Part

    @classmethod
    def of(cls, layer: Any) -> _LayerParts:
        linear1, linear2, dropout, dropout2 = (_direct(m) for m in (layer.linear1, layer.linear2, layer.dropout,
                                                                     layer.dropout2))
        activation = layer.activation

        def ff(x: torch.Tensor) -> torch.Tensor:  # torch's _ff_block, in its order
            return dropout2(linear2(dropout(activation(linear1(x)))))

        if type(layer)._ff_block is not torch.nn.TransformerEncoderLayer._ff_block:
            ff = layer._ff_block  # a layer with a feed-forward block of its own

        cross = layer.cross_attention
        return cls(norm1=_direct(layer.norm1), norm2=_direct(layer.norm2),
                   norm_cross=_direct(layer.norm_cross) if cross is not None else _identity,
                   scale1=_direct(layer.layer_scale_1), scale2=_direct(layer.layer_scale_2),
                   scale_cross=_direct(layer.layer_scale_cross) if cross is not None else _identity,
                   self_out=_then(_direct(_attention_parts(layer.self_attn)[2]), _direct(layer.dropout1)),
                   cross_out=_then(_direct(_attention_parts(cross)[2]), _direct(layer.dropout_cross))
                   if cross is not None else _identity,
                   ff=ff)


def _then(first: Part, second: Part) -> Part:
    """``second(first(x))``, or just ``first`` when ``second`` is the identity."""
    if second is _identity:
        return first
    return lambda x: second(first(x))


class BatchedLM:
    """A batched, per-row-positioned forward pass over an AudioCraft ``LMModel``'s modules.

    :param lm: the loaded language model (``MusicGen.lm``), in eval mode.
    :param attention: ``'math'`` or ``'sdpa'`` (see the module docstring).
    :raises UnsupportedModel: for features the step does not implement.
    """

    def __init__(self, lm: LMModel, attention: str = "math") -> None:
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.lm = lm
        self.attention = attention
        tr = lm.transformer
        self._check_supported(lm)
        self.layers: list[Any] = list(tr.layers)
        first = self.layers[0].self_attn
        self.num_heads = int(first.num_heads)
        self.dim = int(lm.dim)
        self.head_dim = self.dim // self.num_heads
        self.num_codebooks = int(lm.num_codebooks)
        self.card = int(lm.card)
        self.has_cross = self.layers[0].cross_attention is not None
        self.parts = [_LayerParts.of(layer) for layer in self.layers]
        self.embeddings = [_direct_embedding(e) for e in lm.emb]
        self.out_norm = _direct(lm.out_norm) if lm.out_norm is not None else _identity
        self.linears = [_direct(m) for m in lm.linears]
        param = next(iter(lm.parameters()))
        self.device = param.device
        self.dtype = param.dtype

    @staticmethod
    def _check_supported(lm: LMModel) -> None:
        tr = lm.transformer
        if lm.training:
            raise UnsupportedModel("the LM must be in eval mode")
        if tr.positional_embedding != "sin":
            raise UnsupportedModel(f"positional embedding {tr.positional_embedding!r} (only 'sin')")
        if getattr(tr, "checkpointing", "none") != "none":
            raise UnsupportedModel("activation checkpointing")
        if lm.two_step_cfg:
            raise UnsupportedModel("two-step classifier-free guidance")
        for op, names in lm.fuser.fuse2cond.items():
            if op != "cross" and names:
                raise UnsupportedModel(f"'{op}' condition fusing ({names})")
        layers: list[Any] = list(tr.layers)
        for layer in layers:
            attn = layer.self_attn
            if attn.rope is not None or attn.past_context is not None or attn.kv_repeat != 1 \
                    or attn.qk_layer_norm or not attn.causal:
                raise UnsupportedModel("self-attention with rope, past_context, kv_repeat or qk_layer_norm")
            if layer.cross_attention is not None and layer.cross_attention.qk_layer_norm:
                raise UnsupportedModel("cross-attention with qk_layer_norm")

    # ------------------------------------------------------------ conditions
    def condition(self, attributes: list[Any]) -> RowCondition:
        """Encode one row's conditions and their null twin, as ``LMModel.generate`` does,
        and project them once into every layer's cross-attention keys and values.

        :param attributes: one ``ConditioningAttributes`` (a list of length 1).
        """
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

        lm = self.lm
        if not self.has_cross:
            return RowCondition([], [])
        # The same pair stock AudioCraft builds for one sample: [conditional, null], so a
        # row's condition is computed exactly as it would be alone.
        null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
        tokenized = lm.condition_provider.tokenize(attributes + null)
        tensors = lm.condition_provider(tokenized)
        probe = torch.zeros(2, 1, self.dim, device=self.device, dtype=self.dtype)
        _, cross = lm.fuser(probe, tensors)  # the real fuser: concatenation, optional pos. emb.
        assert cross is not None
        keys, values = [], []
        d = self.dim
        for layer in self.layers:
            attn = layer.cross_attention
            w, b, _ = _attention_parts(attn)
            k = F.linear(cross, w[d:2 * d], None if b is None else b[d:2 * d])
            v = F.linear(cross, w[2 * d:], None if b is None else b[2 * d:])
            keys.append(self._heads(k))
            values.append(self._heads(v))
        return RowCondition(keys, values)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, t, heads*d] -> [b, heads, t, d]``."""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    # ------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, start: list[int], cache: KVCache, first_slot: int) -> torch.Tensor:
        """Run ``T`` new tokens of ``M`` consecutive half-row slots; return the logits of
        their last position.

        The keys/values of the new tokens are written into the cache at their positions;
        each query sees the keys of its own slot up to its own position.

        :param tokens: ``[M, K, T]`` codes (a half-row per line, conditional then
            unconditional half of each row).
        :param start: position of each line's first token (``M`` ints; with ``T > 1`` all
            equal: a prefill is one row pair).
        :param cache: the cache; slots ``first_slot:first_slot+M`` are used.
        :param first_slot: first half-row slot.
        :returns: ``[M, K, card]`` logits.
        """
        lm = self.lm
        tr = lm.transformer
        m, k_books, t = tokens.shape
        if t > 1 and len(set(start)) != 1:
            raise ValueError("a multi-token forward needs every line at the same start")
        device = tokens.device
        # Python's sum from 0, as LMModel.forward, so the float additions happen in the same order.
        x = sum([self.embeddings[k](tokens[:, k]) for k in range(k_books)])
        assert isinstance(x, torch.Tensor)
        start_t = torch.tensor(start, dtype=torch.long, device=device)
        positions = start_t.view(-1, 1, 1) + torch.arange(t, device=device).view(1, -1, 1)  # [M, T, 1]
        from audiocraft.modules.transformer import create_sin_embedding

        x = x + tr.positional_scale * create_sin_embedding(positions, self.dim, max_period=tr.max_period,
                                                           dtype=x.dtype)
        # Keys [0, end) cover every line. ``end`` is rounded up to a multiple of KEY_BLOCK:
        # the softmax and matmul kernels take their last partial vector of keys by another
        # path, so a row's sums would otherwise round differently whenever a batch mate
        # sets another ``end``; beyond a whole block the masked keys add exact zeros.
        # (SDPA takes exactly the keys it may see when it runs without a mask, as stock.)
        end = max(start) + t
        if self.attention == "math":
            end = min(round_up(end, KEY_BLOCK), cache.shape.length)
        uniform = len(set(start)) == 1
        # [M, 1, T, end]: key j visible to the query at position p iff j <= p.
        key_pos = torch.arange(end, device=device)
        self_mask = _Mask(key_pos.view(1, 1, 1, -1) <= positions.view(m, 1, t, 1),
                          none_needed=uniform and t == 1, causal=uniform and t > 1 and start[0] == 0)
        slots = slice(first_slot, first_slot + m)
        cross_mask = _Mask(None, True, False)
        if self.has_cross:
            lengths = cache.cross_len[slots]
            if len(set(lengths)) != 1 or lengths[0] != cache.shape.cross_length:
                valid = torch.tensor(lengths, dtype=torch.long, device=device)
                ckey = torch.arange(cache.shape.cross_length, device=device)
                cross_mask = _Mask(ckey.view(1, 1, 1, -1) < valid.view(m, 1, 1, 1), False, False)
        for index, layer in enumerate(self.layers):
            x = self._layer(index, layer, x, start_t, start[0] if t > 1 else -1, cache, slots, self_mask,
                            cross_mask, end)
        x = self.out_norm(x)
        last = x[:, -1:]
        logits = torch.stack([self.linears[k](last) for k in range(k_books)], dim=1)  # [M, K, 1, card]
        return logits[:, :, 0]

    def _layer(self, index: int, layer: Any, x: torch.Tensor, start: torch.Tensor, p0: int, cache: KVCache,
               slots: slice, self_mask: _Mask, cross_mask: _Mask, end: int) -> torch.Tensor:
        """One ``StreamingTransformerLayer``, in the order its ``forward`` applies its parts."""
        parts = self.parts[index]
        if layer.norm_first:
            x = x + parts.scale1(self._self_attention(index, layer, parts.norm1(x), start, p0, cache, slots,
                                                      self_mask, end))
            if self.has_cross:
                x = x + parts.scale_cross(self._cross_attention(index, layer, parts.norm_cross(x), cache, slots,
                                                                cross_mask))
            x = x + parts.scale2(parts.ff(parts.norm2(x)))
        else:
            src = x
            x = parts.norm1(x + parts.scale1(self._self_attention(index, layer, x, start, p0, cache, slots,
                                                                  self_mask, end)))
            if self.has_cross:
                # AudioCraft feeds the layer's input (not x) to cross-attention here; kept as is.
                x = parts.norm_cross(x + parts.scale_cross(self._cross_attention(index, layer, src, cache, slots,
                                                                                 cross_mask)))
            x = parts.norm2(x + parts.scale2(parts.ff(x)))
        return x

    def _self_attention(self, index: int, layer: Any, x: torch.Tensor, start: torch.Tensor, p0: int,
                        cache: KVCache, slots: slice, mask: _Mask, end: int) -> torch.Tensor:
        w, b, _ = _attention_parts(layer.self_attn)
        m, t, _ = x.shape
        packed = F.linear(x, w, b).view(m, t, 3, self.num_heads, self.head_dim)
        q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)  # each [M, H, T, D]
        kc, vc = cache.k[index], cache.v[index]
        if t == 1:  # a decoding step: each line writes at its own position
            rows = torch.arange(slots.start, slots.stop, device=x.device)
            kc[rows, :, start] = k[:, :, 0].to(kc.dtype)
            vc[rows, :, start] = v[:, :, 0].to(vc.dtype)
        else:  # a prefill (chunk): one row pair, every line from p0
            kc[slots, :, p0:p0 + t] = k
            vc[slots, :, p0:p0 + t] = v
        out = self._attend(q, kc[slots, :, :end], vc[slots, :, :end], mask)
        out = out.transpose(1, 2).reshape(m, t, self.dim)
        return self.parts[index].self_out(out)  # out_proj, then dropout1 as _sa_block (identity in eval)

    def _cross_attention(self, index: int, layer: Any, x: torch.Tensor, cache: KVCache, slots: slice,
                         mask: _Mask) -> torch.Tensor:
        w, b, _ = _attention_parts(layer.cross_attention)
        d = self.dim
        m, t, _ = x.shape
        q = self._heads(F.linear(x, w[:d], None if b is None else b[:d]))
        out = self._attend(q, cache.ck[index][slots], cache.cv[index][slots], mask)
        out = out.transpose(1, 2).reshape(m, t, d)
        return self.parts[index].cross_out(out)  # out_proj, then dropout_cross

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: _Mask) -> torch.Tensor:
        """Scaled dot-product attention under ``mask``."""
        if self.attention == "sdpa":
            # The calls stock AudioCraft makes when it can (no mask / causal flag), else a mask.
            if mask.causal:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if mask.none_needed or mask.allowed is None:
                return F.scaled_dot_product_attention(q, k, v)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.allowed)
        scores = torch.matmul(q * (self.head_dim ** -0.5), k.transpose(-1, -2))
        if mask.allowed is not None:
            # Always applied (a no-op when every key is allowed): a row computes the same
            # way whoever shares its batch.
            scores.masked_fill_(mask.blocked, float("-inf"))  # scores is ours: no copy
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights.to(v.dtype), v)


@dataclass(frozen=True)
class _Mask:
    """Which keys each query may see.

    :param allowed: boolean ``[M, 1, T, keys]`` (``True``: may attend), or ``None``: all.
    :param none_needed: every key is allowed (SDPA may skip the mask).
    :param causal: a plain lower-triangular mask from position 0 (SDPA's causal flag).
    """

    allowed: torch.Tensor | None
    none_needed: bool
    causal: bool

    @cached_property
    def blocked(self) -> torch.Tensor:
        """``~allowed``, computed once per forward pass rather than once per layer."""
        assert self.allowed is not None
        return ~self.allowed
