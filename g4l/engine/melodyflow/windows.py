"""Long inputs: overlapping windows, an equal-power crossfade join, and a seam measure.

The model edits at most ``window`` samples at once. A longer input is cut into equal
windows that overlap by at least ``overlap`` samples, each edited on its own, and joined
with an equal-power crossfade over the middle of each overlap (:func:`fade_regions`): the outgoing window's gain is
``cos(pi/2 * u)``, the incoming's ``sin(pi/2 * u)`` (u from 0 to 1 across the overlap), so
the summed power of two *uncorrelated* edits stays constant through the join (a linear
crossfade dips 3 dB in its middle). Two edits of the same input are often correlated
(measured: 0.999 for a near-identity edit), and then the plain equal-power fade bumps the
level by up to 3 dB; so both gains are divided by ``sqrt(a**2 + b**2 + 2 * rho * a * b)``,
``rho`` being the two edits' correlation over the overlap: the join keeps the power
constant for any correlation, and is exactly the cos/sin fade when ``rho`` is 0.

:func:`seam_report` measures a join: the spectral flux and the sample-to-sample step at the
join, each against the same statistic elsewhere in the audio, and the level (RMS in 50 ms
frames) through the overlap against the level around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def plan_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each window over ``total`` samples: one window when it fits, else
    the fewest windows of exactly ``window`` samples, evenly spread, overlapping by at
    least ``overlap`` samples (``window > 2 * overlap`` so only neighbours overlap)."""
    if total <= 0:
        raise ValueError("nothing to edit: empty input")
    if not 0 < 2 * overlap < window:
        raise ValueError(f"overlap must be > 0 and < window / 2, got {overlap} for {window}")
    if total <= window:
        return [(0, total)]
    count = math.ceil((total - overlap) / (window - overlap))
    starts = [round(i * (total - window) / (count - 1)) for i in range(count)]
    return [(s, s + window) for s in starts]


def crossfade_gains(length: int, rho: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power gains ``(outgoing, incoming)`` over ``length`` samples for two signals of
    correlation ``rho`` (see the module docstring)."""
    u = (np.arange(length, dtype=np.float64) + 0.5) / length
    a, b = np.cos(0.5 * np.pi * u), np.sin(0.5 * np.pi * u)
    norm = np.sqrt(a * a + b * b + 2.0 * rho * a * b)
    return (a / norm).astype(np.float32), (b / norm).astype(np.float32)


def fade_regions(spans: list[tuple[int, int]], fade: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of the crossfade between each pair of neighbouring windows: the
    middle ``fade`` samples of their overlap (all of it when ``fade`` is None or longer).

    Evenly spread windows can overlap by more than half a window (three windows over
    57 s: the first and third overlap too); fading over a bounded middle part keeps
    the crossfades apart, so at most two windows sound at any sample.
    """
    regions = []
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        length = end - start if fade is None else min(end - start, fade)
        first = (start + end - length) // 2
        regions.append((first, first + length))
    for (_, a_end), (b_start, _) in zip(regions, regions[1:], strict=False):
        if b_start < a_end:
            raise ValueError("crossfades overlap: use a shorter fade")
    return regions


def join_windows(pieces: list[np.ndarray], spans: list[tuple[int, int]], total: int,
                 mode: str = "equal_power", fade: int | None = None) -> np.ndarray:
    """Join edited windows ``pieces`` (``(C, end - start)`` each) into ``(C, total)``,
    crossfading over :func:`fade_regions` (``fade``: the longest crossfade, in samples).

    ``mode``: ``"equal_power"`` (the engine's join, correlation-corrected),
    ``"plain_equal_power"`` (cos/sin, uncorrected), ``"linear"`` (equal-gain crossfade) or
    ``"cut"`` (hard switch in the middle of each overlap): the others exist so the seam
    measure can be checked against joins that should fail it.
    """
    if mode not in ("equal_power", "plain_equal_power", "linear", "cut"):
        raise ValueError(f"unknown join mode {mode!r}")
    regions = fade_regions(spans, fade)
    ramps = []  # (outgoing, incoming) gains of each crossfade
    for i, (first, last) in enumerate(regions):
        if mode == "equal_power":
            a = pieces[i][:, first - spans[i][0]:last - spans[i][0]]
            b = pieces[i + 1][:, first - spans[i + 1][0]:last - spans[i + 1][0]]
            ramps.append(crossfade_gains(last - first, correlation(a, b)))
        else:
            ramps.append(_ramp(last - first, mode))
    out = np.zeros((pieces[0].shape[0], total), np.float32)
    for i, (piece, (start, end)) in enumerate(zip(pieces, spans, strict=True)):
        weight = np.zeros(end - start, np.float32)
        head = regions[i - 1] if i > 0 else (start, start)
        tail = regions[i] if i + 1 < len(spans) else (end, end)
        weight[head[1] - start:tail[0] - start] = 1.0  # this window alone
        if i > 0:
            weight[head[0] - start:head[1] - start] = ramps[i - 1][1]
        if i + 1 < len(spans):
            weight[tail[0] - start:tail[1] - start] = ramps[i][0]
        out[:, start:end] += piece * weight
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation coefficient (zero-lag, all channels) of two equal-shape signals, clipped
    to [-0.5, 1] (0 for silence)."""
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = math.sqrt(float(a64 @ a64) * float(b64 @ b64))
    return 0.0 if den < 1e-20 else min(1.0, max(-0.5, float(a64 @ b64) / den))


def _ramp(length: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "plain_equal_power":
        return crossfade_gains(length)
    if mode == "linear":
        up = ((np.arange(length) + 0.5) / length).astype(np.float32)
        return 1 - up, up
    switch = (np.arange(length) >= length // 2).astype(np.float32)
    return 1 - switch, switch


@dataclass(frozen=True)
class SeamReport:
    """How a join compares with the rest of the audio (ratios: 1 = like anywhere else).

    Attributes:
        flux_ratio: the largest spectral flux within 50 ms of a join / the 99th percentile of
            the flux more than 0.5 s from any join.
        step_ratio: the largest |x[n] - x[n-1]| within 2 ms of a join / the 99.9th
            percentile of the same step more than 0.5 s from any join.
        level_dev_db: the largest |level - reference| in dB over the overlaps, the level
            being the RMS of 50 ms frames and the reference the RMS of the 1 s before and
            after the overlap.
    """

    flux_ratio: float
    step_ratio: float
    level_dev_db: float


def _spectral_flux(mono: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    frames = 1 + (len(mono) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    mag = np.abs(np.fft.rfft(mono[idx] * np.hanning(n_fft)[None, :], axis=1))
    flux = np.sqrt(np.sum(np.diff(mag, axis=0) ** 2, axis=1))
    # the flux between frames k and k+1 belongs to the boundary between their centres
    centres = hop * np.arange(1, frames) + n_fft // 2
    return flux, centres


def seam_report(audio: np.ndarray, rate: int, joins: list[int],
                overlaps: list[tuple[int, int]] | None = None) -> SeamReport:
    """Measure ``audio`` (``(C, N)``) at the ``joins`` (sample positions; for a crossfade the
    middle of each overlap). ``overlaps``: the ``(start, end)`` of each overlap, for the
    level check (default: 0.5 s either side of each join)."""
    mono = np.asarray(audio, np.float64).mean(axis=0)
    n_fft, hop = 1024 * rate // 48000 or 256, 256 * rate // 48000 or 64
    flux, centres = _spectral_flux(mono, n_fft, hop)
    near = np.zeros(len(flux), bool)
    far = np.ones(len(flux), bool)
    for j in joins:
        near |= np.abs(centres - j) <= max(int(0.05 * rate), n_fft)
        far &= np.abs(centres - j) > int(0.5 * rate)
    flux_ratio = float(flux[near].max() / max(np.percentile(flux[far], 99), 1e-12))

    step = np.abs(np.diff(mono))
    pos = np.arange(1, len(mono))
    near_s = np.zeros(len(step), bool)
    far_s = np.ones(len(step), bool)
    for j in joins:
        near_s |= np.abs(pos - j) <= int(0.002 * rate)
        far_s &= np.abs(pos - j) > int(0.5 * rate)
    step_ratio = float(step[near_s].max() / max(np.percentile(step[far_s], 99.9), 1e-12))

    frame = int(0.05 * rate)
    spans = overlaps or [(j - rate // 2, j + rate // 2) for j in joins]
    worst = 0.0
    for start, end in spans:
        ref = np.concatenate([mono[max(0, start - rate):start], mono[end:end + rate]])
        ref_rms = math.sqrt(float(np.mean(ref ** 2)) + 1e-20)
        for f in range(start, end - frame + 1, frame):
            rms = math.sqrt(float(np.mean(mono[f:f + frame] ** 2)) + 1e-20)
            worst = max(worst, abs(20 * math.log10(rms / ref_rms)))
    return SeamReport(flux_ratio=flux_ratio, step_ratio=step_ratio, level_dev_db=worst)
