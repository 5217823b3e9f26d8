"""The planner: what a station generates next, and what a finished stretch becomes.

Prompts rotate on the station's own music timeline: chunk ``k`` covering ``[t, t + d)``
uses the prompt scheduled at ``t``, and a chunk is shortened to end on the next rotation
boundary (lengthened by the crossfade when the transition is one), so the prompt changes
on schedule. Pure functions of the station's record: nothing here reads or writes Redis.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from g4l.jobs.records import Job
from g4l.services.stations.policy import BufferPolicy, Transition
from g4l.services.stations.service import prompt_for
from g4l.settings import Settings
from g4l.store.stations import StationRecord

#: The first stretch of a station with no chunk length is short: listeners hear music sooner.
FIRST_SECONDS = 8.0
#: Never generate less than this to reach a rotation boundary (rotate a little early instead).
MIN_NEW_SECONDS = 4.0
#: Generation speed: the last few chunks' (audio seconds, wall seconds).
RTF_KEPT = 5


@dataclass(frozen=True)
class Stretch:
    """The next generation: prompt ``index`` (``prompt``) from ``audio_start_s`` on the
    music timeline, ``new_s`` seconds of which ``overhang_s`` lie past the rotation
    boundary (a crossfade's overlap); ``fresh``: it starts the prompt afresh (not a
    continuation of the last chunk)."""

    index: int
    prompt: str
    audio_start_s: float
    new_s: float
    overhang_s: float
    fresh: bool


def plan(st: StationRecord, policy: BufferPolicy, settings: Settings) -> Stretch:
    """The station's next stretch (see the module's note on rotations)."""
    audio_s = st.audio_s
    prompts = st.prompts
    rotate = st.rotate_every_s
    transition = Transition.loads(st.transition)
    if policy.chunk_s:
        longest = policy.chunk_s
    elif st.last_blob:
        longest = settings.output_seconds - settings.station_prompt_seconds
    else:
        longest = min(FIRST_SECONDS, settings.output_seconds)
    index, prompt = prompt_for(prompts, rotate, audio_s)
    new_s, overhang = longest, 0.0
    if rotate > 0 and len(prompts) > 1:
        boundary = (math.floor(audio_s / rotate + 1e-9) + 1) * rotate
        remaining = boundary - audio_s
        if remaining < MIN_NEW_SECONDS:  # rotate a little early rather than a stub
            index, prompt = prompt_for(prompts, rotate, boundary)
            remaining += rotate
        new_s = min(longest, remaining)
        if transition.kind == "crossfade" and new_s >= remaining - 1e-6:
            overhang = transition.seconds  # the old prompt plays on under the fade
    last = st.last_prompt_index
    fresh = (not st.last_blob) or (transition.kind != "continue" and last is not None and last != index)
    return Stretch(index, prompt, audio_s, max(MIN_NEW_SECONDS, new_s) + overhang, overhang, fresh)


def chunk_entry(blob: str, meta: dict[str, Any], join: str, join_s: float) -> dict[str, Any]:
    """The stored buffer's entry (:mod:`g4l.hls.station.chunks`) of generated audio ``blob``
    (its GridFS metadata ``meta``), joined to the chunk before by ``join``."""
    return {"blob": blob, "seconds": round(float(meta.get("duration") or 0), 4),
            "lead_in_s": float(meta.get("lead_in_s") or 0.0), "prompt": meta.get("prompt") or "",
            "prompt_index": int(meta.get("prompt_index") or 0), "job_id": meta.get("job_id"),
            "audio_start_s": float(meta.get("audio_start_s") or 0), "join": join, "join_s": join_s}


def finished_stretch(st: StationRecord, job: Job, blob: str, meta: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                               dict[str, Any]]:
    """What finished job ``job`` (its audio ``blob``, metadata ``meta``) becomes: its
    chunk entry (joined by the station's transition when it starts a new prompt) and the
    record's changes (timeline, generation count, speed)."""
    index = int(meta.get("prompt_index") or 0)
    rotated = bool(st.generations) and index != st.last_prompt_index
    transition = Transition.loads(st.transition)
    join, join_s = (transition.kind, transition.seconds) if rotated else ("continue", 0.0)
    entry = chunk_entry(blob, meta, join, join_s)
    audio_start = float(meta.get("audio_start_s") or 0)
    overhang = float(meta.get("overhang_s") or 0.0)
    if rotated:
        rotate = st.rotate_every_s
        scheduled = round(audio_start / rotate) * rotate if rotate else audio_start
        entry.update(rotated=True, scheduled_audio_s=scheduled)
    seconds = float(meta.get("duration") or 0)
    wall = max(1e-3, (job.finished or time.time()) - (job.started or job.created))
    changes: dict[str, Any] = {
        "job_id": "", "last_blob": blob,
        "audio_s": round(audio_start + seconds - overhang, 3), "generations": st.generations + 1,
        "last_prompt_index": index, "last_generated_at": job.finished or time.time(),
        "rtf": [*st.rtf, [round(seconds, 3), round(wall, 3)]][-RTF_KEPT:],
    }
    return entry, changes
