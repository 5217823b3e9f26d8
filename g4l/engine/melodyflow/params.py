"""Validation and resolution of an edit's parameters (:class:`~g4l.engine.base.TransformParams`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from g4l.engine.base import EDIT_SOLVER_STEPS, TransformParams

SOLVERS = tuple(EDIT_SOLVER_STEPS)
#: Solver steps when ``TransformParams.steps`` is None (the released model's defaults).
DEFAULT_STEPS = EDIT_SOLVER_STEPS

__all__ = ["DEFAULT_STEPS", "SOLVERS", "EditPlan", "TransformParams", "resolve"]


@dataclass(frozen=True)
class EditPlan:
    """Validated, resolved parameters of one edit (what the solver needs)."""

    text: str
    flowstep: float
    solver: str
    steps: int
    cfg: float
    seed: int | None
    regularize: bool       # regularised inversion: euler only
    regularize_iters: int  # model passes per inversion step (1 without regularisation)
    lambda_kl: float

    @property
    def inversion_calls(self) -> int:
        """Progress units of the inversion pass (one per solver iteration)."""
        return self.steps * (self.regularize_iters if self.regularize else 1)

    @property
    def calls_per_window(self) -> int:
        """Progress units of one window: the inversion, then ``steps`` generation steps."""
        return self.inversion_calls + self.steps


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def resolve(params: TransformParams) -> EditPlan:
    """Check ``params`` and fill in the defaults.

    Raises:
        ValueError: a flowstep outside ]0, 1[, an unknown solver, bad steps/cfg/seed/text,
            or an odd step count for the midpoint solver.
    """
    if not isinstance(params.text, str):
        raise ValueError(f"text must be a string, got {type(params.text).__name__}")
    if not _number(params.flowstep) or not 0.0 < params.flowstep < 1.0:
        raise ValueError(f"flowstep must be > 0 and < 1, got {params.flowstep!r}")
    if params.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {params.solver!r}")
    steps = DEFAULT_STEPS[params.solver] if params.steps is None else params.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an integer in [1, 1000], got {steps!r}")
    if params.solver == "midpoint" and steps % 2:
        # the midpoint solver spends two schedule points per step
        raise ValueError(f"the midpoint solver needs an even number of steps, got {steps}")
    if not _number(params.cfg) or params.cfg < 0.0:
        raise ValueError(f"cfg must be >= 0, got {params.cfg!r}")
    if params.seed is not None and (isinstance(params.seed, bool) or not isinstance(params.seed, int)
                                    or not 0 <= params.seed < 2**63):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {params.seed!r}")
    regularize = bool(params.regularize) and params.solver == "euler"
    iters = params.regularize_iters
    if regularize and (isinstance(iters, bool) or not isinstance(iters, int) or not 1 <= iters <= 16):
        raise ValueError(f"regularize_iters must be an integer in [1, 16], got {iters!r}")
    if regularize and (not _number(params.lambda_kl) or params.lambda_kl < 0.0):
        raise ValueError(f"lambda_kl must be >= 0, got {params.lambda_kl!r}")
    return EditPlan(text=params.text.strip(), flowstep=float(params.flowstep), solver=params.solver,
                    steps=steps, cfg=float(params.cfg), seed=params.seed, regularize=regularize,
                    regularize_iters=iters if regularize else 1,
                    lambda_kl=float(params.lambda_kl) if regularize else 0.0)
