"""A decoding step with every shape fixed, so it can be captured in a CUDA graph (or
compiled): what the GPU check times against the engine's own loop.

The engine's step (:meth:`g4l.engine.batch_lm.BatchedLM.forward`) sizes its attention by
the rows' furthest position, builds the positions and masks from Python lists and hands
the sampled codes back to the host every step: right for rows that come and go, but each
of those is a host round trip or a new shape, and a CUDA graph replays neither. Here the
rows are fixed for the run, the positions live on the device, attention reads the whole
preallocated cache under a mask, and the sampled codes are fed back on the device, so
``forward`` replays as one graph. It runs the same modules and weights as ``BatchedLM``
(and reads a :class:`~g4l.engine.kv_cache.KVCache` the engine's loop filled), and its
logits are checked against ``BatchedLM.forward``'s (:func:`check_against_engine`).

A benchmark, not a server path: no delay pattern, no per-row sampling parameters, no
joining or leaving rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from g4l.engine.batch_lm import BatchedLM, _attention_parts
from g4l.engine.kv_cache import KVCache


class StaticStep:
    """``rows`` rows (``2 * rows`` half-row lines, conditional then unconditional) decoding
    one token a step over ``cache`` (slots ``0 .. 2*rows-1``, filled by the engine).

    :param model: the engine's forward pass (its modules and weights are used).
    :param cache: a cache holding the rows' prompts; its length bounds the steps.
    :param rows: rows decoding.
    :param positions: each line's next position (``2 * rows`` ints).
    :param tokens: ``[2*rows, K]`` codes each line feeds first.
    :param cfg_coef: classifier-free guidance coefficient.
    :param top_k: top-k sampling (AudioCraft's default 250).
    """

    def __init__(self, model: BatchedLM, cache: KVCache, rows: int, positions: list[int], tokens: torch.Tensor,
                 cfg_coef: float = 3.0, top_k: int = 250) -> None:
        lm = model.lm
        if not all(layer.norm_first for layer in model.layers):
            raise ValueError("the static step implements norm_first layers only (MusicGen's)")
        self.model, self.cache, self.rows = model, cache, rows
        self.lines = 2 * rows
        self.cfg_coef, self.top_k = cfg_coef, top_k
        device = model.device
        self.positions = torch.tensor(positions, dtype=torch.long, device=device)  # [M], advanced in place
        self.tokens = tokens.to(device=device, dtype=torch.long).reshape(self.lines, model.num_codebooks, 1).clone()
        self.key_pos = torch.arange(cache.shape.length, device=device)
        self.line_index = torch.arange(self.lines, device=device)
        self.special = int(lm.special_token_id)
        self.logits: torch.Tensor | None = None  # the graph's output when captured
        self._graph: Any = None
        if model.has_cross:
            lengths = torch.tensor(cache.cross_len[:self.lines], device=device)
            ckey = torch.arange(cache.shape.cross_length, device=device)
            self.cross_mask = ckey.view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)
        else:
            self.cross_mask = None

    # ------------------------------------------------------------ the forward pass
    def forward(self) -> torch.Tensor:
        """Logits ``[M, K, card]`` of the lines' next tokens; writes their keys and values
        at ``positions``. Fixed shapes, no host synchronisation."""
        from audiocraft.modules.transformer import create_sin_embedding

        m = self.model
        lm, tr = m.lm, m.lm.transformer
        tokens, pos = self.tokens, self.positions
        x = sum([lm.emb[k](tokens[:, k]) for k in range(m.num_codebooks)])
        assert isinstance(x, torch.Tensor)
        x = x + tr.positional_scale * create_sin_embedding(pos.view(-1, 1, 1), m.dim, max_period=tr.max_period,
                                                           dtype=x.dtype)
        self_mask = self.key_pos.view(1, 1, 1, -1) <= pos.view(-1, 1, 1, 1)  # [M, 1, 1, L]
        lines = self.lines
        for index, layer in enumerate(m.layers):
            h = layer.norm1(x)
            w, b, out_proj = _attention_parts(layer.self_attn)
            q, k, v = F.linear(h, w, b).view(lines, 1, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            kc, vc = self.cache.k[index], self.cache.v[index]
            kc[self.line_index, :, pos] = k[:, :, 0].to(kc.dtype)
            vc[self.line_index, :, pos] = v[:, :, 0].to(vc.dtype)
            out = F.scaled_dot_product_attention(q, kc[:lines], vc[:lines], attn_mask=self_mask)
            x = x + layer.layer_scale_1(out_proj(out.transpose(1, 2).reshape(lines, 1, m.dim)))
            if m.has_cross:
                w, b, out_proj = _attention_parts(layer.cross_attention)
                d = m.dim
                q = m._heads(F.linear(layer.norm_cross(x), w[:d], None if b is None else b[:d]))
                out = F.scaled_dot_product_attention(q, self.cache.ck[index][:lines], self.cache.cv[index][:lines],
                                                     attn_mask=self.cross_mask)
                x = x + layer.layer_scale_cross(out_proj(out.transpose(1, 2).reshape(lines, 1, d)))
            x = x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))
        if lm.out_norm is not None:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x[:, -1]) for k in range(m.num_codebooks)], dim=1)

    # ------------------------------------------------------------ a whole step
    def capture(self, warmup: int = 3) -> None:
        """Record :meth:`forward` in a CUDA graph (after ``warmup`` eager runs on a side
        stream, as PyTorch requires); :meth:`step` then replays it. The warm-up runs
        advance nothing: positions are restored after them."""
        saved = self.positions.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                self.forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            self.logits = self.forward()
        self._graph = graph
        self.positions.copy_(saved)

    def step(self) -> None:
        """One decoding step: the forward pass (the graph when captured), guidance, top-k
        sampling on the device, the codes fed back and the positions advanced."""
        with torch.inference_mode():
            if self._graph is not None:
                self._graph.replay()
                logits = self.logits
                assert logits is not None
            else:
                logits = self.forward()
            cond, uncond = logits[0::2].float(), logits[1::2].float()
            guided = uncond + (cond - uncond) * self.cfg_coef  # [rows, K, card]
            top, idx = guided.topk(min(self.top_k, guided.shape[-1]), dim=-1)
            probs = torch.softmax(top, dim=-1).view(-1, top.shape[-1])
            picked = idx.view(-1, idx.shape[-1]).gather(1, torch.multinomial(probs, 1))
            picked = picked.view(self.rows, -1)  # [rows, K]
            self.tokens[0::2, :, 0] = picked
            self.tokens[1::2, :, 0] = picked
            self.positions.add_(1)


def from_loop(loop: Any, cfg_coef: float = 3.0) -> StaticStep:
    """A static step over the rows a :class:`~g4l.engine.batching.DecodeLoop` holds now
    (every row prefilled; the loop is not stepped again): their cache, next positions and
    last codes."""
    rows = loop.rows
    positions: list[int] = []
    tokens = []
    for row in rows:
        positions += [row.offset - 1, row.offset - 1]
        last = torch.from_numpy(row.seq_np[:, row.offset - 1].copy())
        tokens += [last, last]
    return StaticStep(loop.model, loop.cache, len(rows), positions, torch.stack(tokens), cfg_coef=cfg_coef)


def check_against_engine(step: StaticStep) -> float:
    """Largest absolute difference between the static forward's logits and the engine's
    (``BatchedLM.forward``, SDPA attention) for the same lines, positions and cache. Both
    write the same keys at the same places, so the cache is left as it was found."""
    with torch.inference_mode():
        ours = step.forward().float()
        start = [int(p) for p in step.positions.tolist()]
        theirs = step.model.forward(step.tokens, start, step.cache, 0).float()
    return float((ours - theirs).abs().max())
