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


@dataclass(frozen=True)
class SamplingParams:
    """How one row picks its next tokens (MusicGen's names and defaults).

    :param top_k: keep the ``top_k`` most likely tokens (0: all); ``top_k=1`` is greedy.
    :param top_p: nucleus threshold; when > 0 it replaces ``top_k``.
    :param temperature: softmax temperature (> 0).
    :param cfg_coef: classifier-free guidance: ``uncond + (cond - uncond) * cfg_coef``.
    """

    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0

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
    """Draw one token per codebook.

    :param logits: ``[K, card]`` guided logits of one row.
    :param params: the row's parameters.
    :param generator: the row's generator (advanced by the draw).
    :returns: ``[K]`` token ids.
    """
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p > 0.0:
        ordered, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(ordered, dim=-1) - ordered > params.top_p
        ordered *= (~outside).float()
        ordered.div_(ordered.sum(dim=-1, keepdim=True))
        picked = torch.multinomial(ordered, num_samples=1, generator=generator)
        return torch.gather(order, -1, picked)[:, 0]
    if params.top_k > 0:
        kth = torch.topk(probs, params.top_k, dim=-1)[0][..., [-1]]
        probs *= (probs >= kth).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
