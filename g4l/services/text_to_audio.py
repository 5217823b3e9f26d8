"""Text to audio (jerry: Stable Audio Open Small): queue the job, wait for its audio, plan
a loop at the DAW's tempo, and report the family's models as the workers see them.

A text-to-audio job goes through the same queue as gary's (queue position, cancel,
interactive priority, the rate limit and queue limit, owners and keys, crash recovery):
:meth:`TextToAudioService.submit` queues it and answers at once (``/api/v1``);
:meth:`TextToAudioService.generate` also waits for the audio (the upstream routes answer
with it) without holding the event loop (:mod:`g4l.services.job_waits`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.engine.families import STABLE_AUDIO, default_model, family_of, models_of
from g4l.errors import GenerationFailed, InvalidRequest, ModelUnavailable
from g4l.jobs import delivery, lifecycle, recovery
from g4l.jobs.kinds import KindName
from g4l.jobs.records import Job, JobStatus, Priority, new_job_id
from g4l.jobs.spec import GenerationSpec
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.job_waits import JobWaits
from g4l.services.jobs import JobService, JobView
from g4l.services.models import family_states
from g4l.services.sessions import SessionService
from g4l.services.specs import SpecResolver

log = get_logger(__name__)

KIND = KindName.TEXT_TO_AUDIO
#: How long a request that answers with the audio waits for it (queue included); past
#: this its job is canceled and the request fails.
WAIT_S = 900.0
#: ``NNNbpm`` (or ``NNN bpm``) anywhere in a prompt: the loop's tempo.
BPM_PATTERN = re.compile(r"(\d+)\s*bpm", re.IGNORECASE)
BPM_MIN, BPM_MAX = 1, 999
LOOP_BARS = (1, 2, 4, 8)
LOOP_TYPES = ("auto", "drums", "instruments")
#: What a loop type steers away from (our own wording), and the words it adds to the prompt.
LOOP_NEGATIVE = {"drums": "melodic instruments, chords, bass line, vocals, singing",
                 "instruments": "drums, drum kit, percussion, cymbals, hi-hats, claps"}
#: A loop's default guidance: stronger than a clip's, so the tempo and style hold.
LOOP_CFG = 6.0
BEATS_PER_BAR = 4


def detect_bpm(prompt: Any) -> int | None:
    """The tempo a prompt names (``"lofi beat 90bpm"`` -> 90), or None."""
    if not isinstance(prompt, str):
        return None
    found = BPM_PATTERN.search(prompt)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class LoopPlan:
    """A loop at the prompt's tempo: ``bars`` whole bars of 4 beats, ``seconds`` long."""

    bpm: int
    bars: int
    loop_type: str
    prompt: str
    negative_prompt: str | None

    @property
    def seconds_per_bar(self) -> float:
        return BEATS_PER_BAR * 60.0 / self.bpm

    @property
    def seconds(self) -> float:
        return self.bars * self.seconds_per_bar


def plan_loop(prompt: Any, bars: Any = None, loop_type: Any = None, negative_prompt: Any = None,
              window_s: float = STABLE_AUDIO.window_s) -> LoopPlan:
    """Plan a loop: the prompt must name its tempo (``NNNbpm``); ``bars`` is 1, 2, 4 or 8,
    or absent/``"auto"`` for the most of those that fit in ``window_s``; ``loop_type``
    ``drums`` or ``instruments`` steers away from the other (a negative prompt, joined
    to the client's own).

    :raises InvalidRequest: no tempo in the prompt, a bar count or loop type not allowed,
        or a loop longer than the model makes.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("prompt is required (a text describing the loop, with its tempo, e.g. '120bpm')")
    bpm = detect_bpm(prompt)
    if bpm is None:
        raise InvalidRequest("the prompt must name the tempo as NNNbpm (e.g. 'funky drums 120bpm')")
    if not BPM_MIN <= bpm <= BPM_MAX:
        raise InvalidRequest(f"the tempo must be {BPM_MIN}-{BPM_MAX} bpm (the prompt says {bpm}bpm)")
    kind = "auto" if loop_type in (None, "") else loop_type
    if kind not in LOOP_TYPES:
        raise InvalidRequest(f"loop_type must be one of: {', '.join(LOOP_TYPES)}")
    bar_s = BEATS_PER_BAR * 60.0 / bpm
    if bar_s > window_s:
        raise InvalidRequest(f"at {bpm} bpm one bar lasts {bar_s:.2f} s, longer than the {window_s:g} s "
                             "this model makes")
    if bars in (None, "", "auto"):
        count = max(b for b in LOOP_BARS if b * bar_s <= window_s)
    elif isinstance(bars, int) and not isinstance(bars, bool) and bars in LOOP_BARS:
        count = bars
        if count * bar_s > window_s:
            fits = max(b for b in LOOP_BARS if b * bar_s <= window_s)
            raise InvalidRequest(f"{count} bars at {bpm} bpm last {count * bar_s:.2f} s; this model makes at most "
                                 f"{window_s:g} s: ask for {fits} bars or fewer, or bars 'auto'")
    else:
        raise InvalidRequest("bars must be 1, 2, 4 or 8 (or 'auto': the most that fit)")
    text = prompt.strip()
    if kind == "drums" and "drum" not in text.lower():
        text = f"{text} drum loop"
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidRequest("negative_prompt must be a string")
    negatives = [n for n in ((negative_prompt or "").strip(), LOOP_NEGATIVE.get(kind, "")) if n]
    return LoopPlan(bpm=bpm, bars=count, loop_type=kind, prompt=text, negative_prompt=", ".join(negatives) or None)


@dataclass(frozen=True)
class Clip:
    """A finished text-to-audio job: its WAV, and what the answer's metadata reports."""

    job: Job
    wav: bytes
    #: Seconds the model ran (the upstream ``generation_time``).
    model_seconds: float
    device: str

    @property
    def seed(self) -> int:
        assert self.job.spec.seed is not None
        return self.job.spec.seed


@dataclass(frozen=True)
class ModelState:
    """One allowed text-to-audio model as the live workers report it.

    :param state: ``loaded`` (a worker holds it), ``loading``, ``failed`` (every worker
        that tried failed; ``reason`` says why), ``not_loaded`` (loads with its first job),
        ``unavailable`` (no live worker loads the family) or ``not_allowed``.
    """

    model: str
    state: str
    reason: str | None
    default: bool
    device: str | None


class TextToAudioService:
    """Queue, wait for and describe text-to-audio jobs.

    :param jobs: the job service (views, cancel) whose session service gives the limits.
    :param waits: wakes a waiting request when its job ends (a relay hook).
    """

    def __init__(self, ctx: Context, jobs: JobService, waits: JobWaits) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.sessions: SessionService = jobs.sessions
        self.waits = waits

    @property
    def specs(self) -> SpecResolver:
        return self.sessions.specs

    # ------------------------------------------------------------ jobs
    def submit(self, caller: Caller, spec: GenerationSpec, job_id: str | None = None) -> JobView:
        """Queue a text-to-audio job of ``spec`` (from ``SpecResolver.text_to_audio``).

        :raises ModelUnavailable: every live worker failed to load its model.
        :raises QueueFull, RateLimited:
        """
        self.require_served(spec.model)
        self.sessions.check_capacity(spec.model)
        self.sessions.check_rate(caller)
        job = Job(id=job_id or new_job_id(), kind=KIND, session_id="", spec=spec, owner=caller.owner,
                  priority=Priority.INTERACTIVE)
        self.ctx.queue.enqueue(job, limit=self.ctx.settings.max_queue)
        log.info("job queued", job_id=job.id, kind=KIND, model=spec.model, seconds=spec.output_seconds,
                 seed=spec.seed)
        view = self.jobs.peek(job.id)
        assert view is not None  # just saved
        return view

    def generate(self, caller: Caller, spec: GenerationSpec, wait_s: float = WAIT_S) -> Clip:
        """Queue the job and wait for its audio.

        :raises GenerationFailed: the job failed (its reason), was canceled, or did not end
            within ``wait_s`` (it is canceled then).
        """
        view = self.submit(caller, spec)
        job = self.waits.wait(view.job.id, wait_s)
        if job is None:
            raise GenerationFailed("the generation's record expired before it ended")
        if not job.status.final:
            lifecycle.request_cancel(self.ctx, job.id)
            log.warning("text-to-audio wait timed out; job canceled", job_id=job.id, seconds=wait_s)
            raise GenerationFailed(f"the generation did not finish within {wait_s:g} s (queue included); "
                                   "it was canceled, please try again")
        if job.status is JobStatus.CANCELED:
            raise GenerationFailed("the generation was canceled")
        if job.status is not JobStatus.COMPLETED or not job.output_blob:
            raise GenerationFailed(job.error or "the generation failed")
        data = delivery.read_result(self.ctx, job.id, job.output_blob, offload=self.sessions.offload)
        if data is None:
            raise GenerationFailed("the generated audio is missing from storage")
        raw = self.ctx.redis.hmget(keys.job(job.id), ["model_seconds", "worker"])
        return Clip(job=job, wav=bytes(data), model_seconds=float(raw[0] or 0.0), device=self._device(raw[1]))

    def _device(self, worker: str | None) -> str:
        """The device of the worker that ran a job (``cpu``/``cuda``), as its heartbeat says."""
        try:
            beat = recovery.alive_workers(self.ctx).get(worker or "")
            return str(json.loads(beat).get("device") or "cpu") if beat else self.ctx.settings.device
        except Exception:
            return self.ctx.settings.device

    # ------------------------------------------------------------ models
    def default_model(self) -> str | None:
        s = self.ctx.settings
        return default_model(STABLE_AUDIO, s.models, None, s.model_path_map)

    def family_state(self) -> dict[str, Any]:
        """jerry's family as ``/health`` reports it (:func:`g4l.services.models.family_states`)."""
        return family_states(self.ctx)[STABLE_AUDIO.name]

    def models(self) -> list[ModelState]:
        """Every allowed text-to-audio model and its state on the live workers: the
        default model's is the family's (``loaded``, ``loading``, ``failed`` with the
        reason, ``unavailable``: no live worker loads the family); another allowed model
        is ``loaded`` once a worker holds it, else ``not_loaded`` (it loads with its first job)."""
        s = self.ctx.settings
        allowed = models_of(STABLE_AUDIO, s.models, s.model_path_map)
        default = self.default_model()
        try:
            beats = [json.loads(b) for b in recovery.alive_workers(self.ctx).values()]
        except Exception:
            beats = []
        family = family_states(self.ctx, beats)[STABLE_AUDIO.name]
        serving = [b for b in beats if STABLE_AUDIO.name in (b.get("families") or {})]
        out = []
        for model in allowed:
            holders = [b for b in serving if model in (b.get("models") or [])]
            if holders:
                state, reason = "loaded", None
            elif model == default:
                state, reason = str(family["state"]), family.get("reason")
            else:
                failures = [r for b in serving if (r := (b.get("models_failed") or {}).get(model))]
                state, reason = ("failed", failures[0]) if serving and len(failures) == len(serving) else \
                    ("not_loaded" if serving else "unavailable", None)
            if state == "unavailable" and reason is None:
                reason = "no live generation worker loads jerry's models"
            device = (holders or serving or [{}])[0].get("device")
            out.append(ModelState(model=model, state=state, reason=reason, default=model == default, device=device))
        return out

    def require_served(self, model: str) -> None:
        """Refuse at once a job no worker will run: the family's model failed on every
        worker that serves it, or live workers exist and none serves the family (a worker
        starting up may not have said yet: with no live worker the job queues).

        :raises ModelUnavailable:"""
        state = next((m for m in self.models() if m.model == model), None)
        if state is None:
            return
        try:
            alive = bool(recovery.alive_workers(self.ctx))
        except Exception:
            return
        if state.state == "failed" or (state.state == "unavailable" and alive):
            raise ModelUnavailable(f"jerry's model {model} is unavailable: {state.reason}")

    def is_text_model(self, model: str) -> bool:
        return family_of(model, self.ctx.settings.model_path_map) is STABLE_AUDIO
