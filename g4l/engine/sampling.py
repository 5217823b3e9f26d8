"""Per-row sampling: each row its own top-k/top-p/temperature/guidance and random generator.

The operations are those of AudioCraft's ``LMModel._sample_next_token`` and its
``sample_top_k``/``sample_top_p`` helpers, in the same order, but each row draws from its
own ``torch.Generator`` instead of torch's global one: a row's draws depend on its seed
only, never on who shares its batch. Seeded with the same number, a fresh generator gives
the stream the global generator gives after ``torch.manual_seed``, so a lone row samples
what stock AudioCraft samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from g4l.engine.base import GenerationParams

#: MusicGen's sampling defaults, written once (engine.base.GenerationParams).
_MUSICGEN = GenerationParams()

@dataclass(frozen=True)
class SamplingParams:
    """How one row picks its next tokens (MusicGen's names and defaults).

    :param top_k: keep the ``top_k`` most likely tokens (0: all); ``top_k=1`` is greedy.
    :param top_p: nucleus threshold; when > 0 it replaces ``top_k``.
    :param temperature: softmax temperature (> 0).
    :param cfg_coef: classifier-free guidance: ``uncond + (cond - uncond) * cfg_coef``.
    """

    top_k: int = _MUSICGEN.top_k
    top_p: float = _MUSICGEN.top_p
    temperature: float = _MUSICGEN.temperature
    cfg_coef: float = _MUSICGEN.cfg_coef

    def __post_init__(self) -> None:
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0 or self.temperature <= 0.0:
            raise ValueError(f"invalid sampling parameters: {self}")


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator for one row: seeded, or from fresh OS entropy when ``seed`` is None."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def guided(cond: torch.Tensor, uncond: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance, written as AudioCraft writes it (same float operations)."""
    return uncond + (cond - uncond) * cfg_coef


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per codebook for one row.

    :param logits: ``[K, card]`` guided logits of one row.
    :param params: the row's parameters.
    :param generator: the row's generator (advanced by the draw).
    :returns: ``[K]`` token ids.
    """
    return sample_rows(logits[None], params, [generator])[0]


def sample_rows(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Draw one token per codebook for rows that share their sampling parameters, in one
    vectorised pass; each row still draws from its own generator, so its tokens are those
    it would draw alone, bit for bit.

    Why this is exact: ``torch.multinomial(p, 1, generator=g)`` on CPU and CUDA is
    ``argmax(p / q)`` with ``q = empty_like(p).exponential_(1, generator=g)`` (ATen's
    one-sample path; ``test_sample_rows_draws_what_multinomial_draws`` checks it). Here each
    row draws its own ``q`` of its own ``[K, card]`` shape with its own generator (the same
    numbers ``multinomial`` would draw), and the softmax, top-k/top-p, sums, division and
    argmax run over all rows at once: they work along the last dimension, each row's
    results independent of the others (bit-equal to one row's, checked by the tests).

    :param logits: ``[N, K, card]`` guided logits.
    :param params: the rows' common parameters.
    :param generators: one generator per row (each advanced by its row's draw).
    :returns: ``[N, K]`` token ids.
    """
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows but {len(generators)} generators")
    probs = torch.softmax(logits / params.temperature, dim=-1)
    order: torch.Tensor | None = None
    if params.top_p > 0.0:
        probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(probs, dim=-1) - probs > params.top_p
        probs *= (~outside).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    elif params.top_k > 0:
        # The k-th largest value is the (card - k + 1)-th smallest: the value topk's last
        # column holds (an element of probs, so bit-equal), found by selection, not a sort
        # (6 times faster for k=250 of 256 at batch 8 on this CPU).
        k = min(params.top_k, probs.shape[-1])
        kth = torch.kthvalue(probs, probs.shape[-1] - k + 1, dim=-1, keepdim=True)[0]
        probs *= (probs >= kth).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    if not bool((probs.min() >= 0) & (probs.max() < float("inf"))):  # multinomial's own check (nan fails too)
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")
    q = torch.empty_like(probs)
    for i, generator in enumerate(generators):
        q[i].exponential_(1, generator=generator)  # the row's own draw, as multinomial's
    picked = torch.argmax(probs / q, dim=-1)
    if order is not None:
        picked = torch.gather(order, -1, picked[..., None])[..., 0]
    return picked
