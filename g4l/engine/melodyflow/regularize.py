"""The regularisation of MelodyFlow's latent inversion (the paper's "regularised inversion").

Inverting an edit with Euler steps drifts off the distribution the model saw in training.
At each inversion step the velocity predicted at the current latent is corrected toward the
velocity the model predicts at a *properly noised* sample of the same step
(``(1 - t) * N(0, I) + t * x_1``): a few gradient steps on a KL divergence between the two
velocities' local statistics. The statistics are those of 4x4 patches (4 latent channels x
4 frames): each patch is treated as a 1-D Gaussian (mean, unbiased variance) and the
divergences |KL| of all patches are summed. The gradient is clipped to +-100 per element and
scaled by ``lambda_kl``.
"""

from __future__ import annotations

import torch

PATCH = 4          # channels and frames per patch
REG_STEPS = 4      # gradient steps per regularisation
GRAD_CLIP = 100.0
_EPS = 1e-6


def _patch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of each 4x4 patch of ``(B, C, T)`` (trailing frames dropped)."""
    b, c, t = x.shape
    frames = (t // PATCH) * PATCH
    p = x[:, : (c // PATCH) * PATCH, :frames].reshape(b, c // PATCH, PATCH, frames // PATCH, PATCH)
    p = p.permute(0, 1, 3, 2, 4).reshape(b, c // PATCH, frames // PATCH, PATCH * PATCH)
    return p.mean(dim=-1), p.var(dim=-1)


def patch_kl(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Sum over patches of |KL| between the patch Gaussians of ``x`` and of ``reference``."""
    mu0, var0 = _patch_stats(x)
    mu1, var1 = _patch_stats(reference)
    kl = torch.log((var1 + _EPS) / (var0 + _EPS)) + (var0 + (mu0 - mu1) ** 2) / (var1 + _EPS) - 1
    return kl.abs().sum()


def regularize_velocity(velocity: torch.Tensor, reference: torch.Tensor, lambda_kl: float) -> torch.Tensor:
    """``velocity`` after :data:`REG_STEPS` clipped gradient steps of ``lambda_kl`` on
    :func:`patch_kl` toward ``reference``; unchanged when ``lambda_kl`` is 0 or the latent
    is shorter than one patch."""
    if lambda_kl <= 0 or velocity.shape[-1] < PATCH or velocity.shape[1] < PATCH:
        return velocity
    reference = reference.detach().float()
    out = velocity.detach().float()
    with torch.enable_grad():
        for _ in range(REG_STEPS):
            var = out.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(patch_kl(var, reference), var)
            out = (out - lambda_kl * grad.clamp(-GRAD_CLIP, GRAD_CLIP)).detach()
    return out.to(velocity.dtype)
