"""A station's buffer policy and prompt schedule: what its health is, when it generates,
when it goes off the air, and how one prompt hands over to the next.

Pure values and checks (no I/O): :class:`~g4l.services.stations.StationService` validates
a create request with them and stores them in the station's hash; the packager's
:class:`~g4l.hls.station.StationDriver` reads them back every tick.

Health (the lower bound of each state, seconds of audio generated and not yet played):
``HEALTHY >= healthy > WARNING >= warning > CRITICAL >= critical > EMERGENCY >= emergency >
DEPLETED``. Generation rests while HEALTHY and runs back to back below it. DEPLETED takes
the program off the air (a slate plays); it comes back once ``resume_s`` is buffered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from g4l.errors import InvalidRequest
from g4l.settings import Settings

HEALTHY, WARNING, CRITICAL, EMERGENCY, DEPLETED = "HEALTHY", "WARNING", "CRITICAL", "EMERGENCY", "DEPLETED"
STATES = (HEALTHY, WARNING, CRITICAL, EMERGENCY, DEPLETED)
THRESHOLD_NAMES = ("healthy", "warning", "critical", "emergency")
#: A station given no thresholds scales them to its target like the 24/12/6/2 h system.
SCALE = (1.0, 1 / 2, 1 / 4, 1 / 12)
MIN_CHUNK_S = 10.0
TRANSITIONS = ("continue", "break", "crossfade")


@dataclass(frozen=True)
class BufferPolicy:
    """Thresholds (seconds), the resume level and the chunk length (0: the model's window,
    a short first stretch then ``G4L_OUTPUT_SECONDS - G4L_STATION_PROMPT_SECONDS``)."""

    healthy_s: float
    warning_s: float
    critical_s: float
    emergency_s: float
    resume_s: float
    chunk_s: float = 0.0

    def state(self, buffered_s: float) -> str:
        """The health state of ``buffered_s`` seconds of buffer."""
        for name, bound in zip(STATES, self.bounds(), strict=False):
            if buffered_s >= bound:
                return name
        return DEPLETED

    def bounds(self) -> tuple[float, float, float, float]:
        return self.healthy_s, self.warning_s, self.critical_s, self.emergency_s

    def thresholds(self) -> dict[str, float]:
        """``{"healthy": s, "warning": s, "critical": s, "emergency": s}`` (lower bounds)."""
        return {name: round(bound, 3) for name, bound in zip(THRESHOLD_NAMES, self.bounds(), strict=True)}

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | None, settings: Settings) -> BufferPolicy:
        """The stored policy; a station created before policies existed gets the default."""
        if raw:
            return cls(**json.loads(raw))
        return default_policy(settings)


def default_policy(settings: Settings) -> BufferPolicy:
    """No options: the thresholds scaled to ``G4L_STATION_BUFFER_S`` (45 s: 45 / 22.5 /
    11.25 / 3.75 s), so a station starts within one short stretch and keeps ~45 s ahead."""
    healthy, warning, critical, emergency = (settings.station_buffer_s * f for f in SCALE)
    return BufferPolicy(healthy, warning, critical, emergency, resume_s=2 * emergency)


def build_policy(settings: Settings, thresholds: Mapping[str, Any] | str | None, resume_s: float | None,
                 chunk_s: float | None) -> BufferPolicy:
    """A station's policy from its create request.

    :param thresholds: None (scaled to ``G4L_STATION_BUFFER_S``), ``"long"`` (the
        ``G4L_STATION_*_S`` settings, 24/12/6/2 h by default) or the four lower bounds.
    :param resume_s: buffer needed to come back on the air after DEPLETED (default twice
        the emergency bound); between the emergency and the healthy bound.
    :param chunk_s: seconds per generation, ``MIN_CHUNK_S`` to ``G4L_STATION_MAX_CHUNK_S``.
    :raises InvalidRequest: with what is wrong.
    """
    if thresholds is None:
        bounds = [settings.station_buffer_s * f for f in SCALE]
    elif thresholds == "long":
        bounds = [settings.station_healthy_s, settings.station_warning_s, settings.station_critical_s,
                  settings.station_emergency_s]
    elif isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(THRESHOLD_NAMES))
        missing = [n for n in THRESHOLD_NAMES if n not in thresholds]
        if unknown or missing:
            raise InvalidRequest("buffer_thresholds_s needs exactly healthy, warning, critical and emergency "
                                 f"(seconds){'; unknown: ' + ', '.join(unknown) if unknown else ''}"
                                 f"{'; missing: ' + ', '.join(missing) if missing else ''}")
        bounds = []
        for name in THRESHOLD_NAMES:
            value = thresholds[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidRequest(f"buffer_thresholds_s.{name} must be a number of seconds")
            bounds.append(float(value))
    else:
        raise InvalidRequest('buffer_thresholds_s must be "long" or {healthy, warning, critical, emergency}')
    healthy, warning, critical, emergency = bounds
    if not healthy > warning > critical > emergency > 0:
        raise InvalidRequest("buffer_thresholds_s must decrease strictly: healthy > warning > critical > "
                             f"emergency > 0 (got {healthy:g}, {warning:g}, {critical:g}, {emergency:g})")
    if healthy > 7 * 86_400:
        raise InvalidRequest("buffer_thresholds_s.healthy is at most 604800 s (a week)")
    resume = min(2 * emergency, healthy) if resume_s is None else float(resume_s)
    if not emergency < resume <= healthy:
        raise InvalidRequest(f"buffer_resume_s must be above the emergency bound ({emergency:g} s) and at most "
                             f"the healthy bound ({healthy:g} s)")
    chunk = 0.0
    if chunk_s is not None:
        if not MIN_CHUNK_S <= chunk_s <= settings.station_max_chunk_s:
            raise InvalidRequest(f"chunk_seconds must be {MIN_CHUNK_S:g}-{settings.station_max_chunk_s:g} s")
        chunk = float(chunk_s)
    return BufferPolicy(healthy, warning, critical, emergency, resume_s=resume, chunk_s=chunk)


@dataclass(frozen=True)
class Transition:
    """How one prompt hands over to the next: ``continue`` (the new prompt continues the
    music, today's default), ``break`` (``seconds`` of silence, then a fresh start) or
    ``crossfade`` (the old prompt's music fades out over ``seconds`` while the new one,
    generated fresh, fades in)."""

    kind: str = "continue"
    seconds: float = 0.0

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | None) -> Transition:
        return cls(**json.loads(raw)) if raw else cls()


def build_transition(settings: Settings, raw: Mapping[str, Any] | None) -> Transition:
    """``{"kind": "break"|"crossfade"|"continue", "seconds": N}``. :raises InvalidRequest:"""
    if raw is None:
        return Transition()
    kind = raw.get("kind")
    if kind not in TRANSITIONS:
        raise InvalidRequest(f"transition.kind must be one of {', '.join(TRANSITIONS)}")
    unknown = sorted(set(raw) - {"kind", "seconds"})
    if unknown:
        raise InvalidRequest(f"transition has unknown fields: {', '.join(unknown)}")
    seconds = raw.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise InvalidRequest("transition.seconds must be a number")
    seconds = float(seconds)
    if kind == "continue":
        if seconds:
            raise InvalidRequest("transition.seconds is for a break or a crossfade")
    elif kind == "break" and not 0 < seconds <= settings.station_max_break_s:
        raise InvalidRequest(f"a break lasts more than 0 and at most {settings.station_max_break_s:g} s")
    elif kind == "crossfade" and not 0 < seconds <= settings.station_max_crossfade_s:
        raise InvalidRequest(f"a crossfade lasts more than 0 and at most {settings.station_max_crossfade_s:g} s")
    return Transition(kind, seconds)


def next_rotation(prompts: list[str], rotate_every_s: float, timeline_s: float) -> tuple[str, float] | None:
    """The next prompt after ``timeline_s`` seconds of the station's music and the timeline
    second it starts at; None when it never rotates."""
    if rotate_every_s <= 0 or len(prompts) < 2:
        return None
    k = math.floor(timeline_s / rotate_every_s + 1e-9) + 1
    return prompts[k % len(prompts)], k * rotate_every_s
