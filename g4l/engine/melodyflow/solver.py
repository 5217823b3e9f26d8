"""The edit's ODE passes on normalised latents: inversion (t: 1 -> flowstep, no text) and
generation (t: flowstep -> 1, text with classifier-free guidance).

Flow convention (MelodyFlow's): t = 0 is noise, t = 1 is data, ``dx/dt = v(x, t)``.
Schedules are uniform in [0, 1] warped by "sway sampling" (coefficient -0.8, more points
near t = 0) and then mapped onto the pass's interval.

Solvers:
* ``euler``: one model pass per step. With regularisation (inversion only), each step is a
  small fixed-point iteration: ``regularize_iters`` passes, each evaluating the velocity at
  the step's *end* time on the current estimate of the step's end point; the last pass also
  evaluates a freshly noised copy of the clean latent and corrects the velocity toward it
  (:mod:`.regularize`); the step uses that corrected velocity.
* ``midpoint``: schedule points are taken in pairs: a half step to the pair's middle point,
  then a full step over the pair with the velocity there (``steps`` must be even).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from g4l.engine.melodyflow.regularize import regularize_velocity

SWAY = -0.8

#: ``velocity(x, t, guided)``: the model's velocity at ``x`` (``(B, C, T)``), flow step
#: ``t`` (float); ``guided`` selects the text pass (CFG) over the unconditional one.
VelocityFn = Callable[[torch.Tensor, float, bool], torch.Tensor]


def schedule(steps: int, start: float, end: float) -> list[float]:
    """``steps + 1`` flow steps from ``start`` to ``end`` (sway-warped)."""
    forward = end > start
    lo, hi = (start, end) if forward else (end, start)
    points = []
    for i in range(steps + 1):
        s = i / steps if forward else 1.0 - i / steps
        s = s + SWAY * (math.cos(math.pi * 0.5 * s) - 1 + s)
        points.append(s * (hi - lo) + lo)
    return points


@dataclass
class PassConfig:
    solver: str
    steps: int
    regularize: bool = False
    regularize_iters: int = 1
    lambda_kl: float = 0.0


def run_pass(x: torch.Tensor, start: float, end: float, cfg: PassConfig, velocity: VelocityFn,
             guided: bool, tick: Callable[[], None], clean: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Integrate ``x`` from flow step ``start`` to ``end``; ``tick()`` after each solver
    iteration (``steps * regularize_iters`` for a regularised pass, else ``steps``).

    ``clean`` (the normalised clean latent) and ``generator`` are needed by regularisation.
    """
    points = schedule(cfg.steps, start, end)
    iters = cfg.regularize_iters if cfg.regularize else 1
    half: torch.Tensor | None = None
    for idx in range(cfg.steps):
        t, t_next = points[idx], points[idx + 1]
        dt = t_next - t
        if cfg.solver == "midpoint":
            if idx % 2 == 0:
                v = velocity(x, t, guided)
                half = x + v * dt
            else:
                assert half is not None
                v = velocity(half, t, guided)
                x = x + v * (t_next - points[idx - 1])
            tick()
            continue
        if not cfg.regularize:
            x = x + velocity(x, t, guided) * dt
            tick()
            continue
        estimate = x
        step_v = torch.zeros_like(x)
        for it in range(iters):
            if it == iters - 1:
                assert clean is not None
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                noised = (1 - t_next) * noise + t_next * clean + 1e-5 * eps
                # one batched pass for the estimate and its noised reference
                both = velocity(torch.cat([estimate, noised]), t_next, guided)
                v, reference = both.chunk(2)
                v = regularize_velocity(v, reference, cfg.lambda_kl)
                step_v = v
            else:
                v = velocity(estimate, t_next, guided)
            estimate = x + v * dt
            tick()
        x = x + step_v * dt
    return x
