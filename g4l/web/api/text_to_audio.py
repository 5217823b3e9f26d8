"""``POST /api/v1/text-to-audio``: a text-to-audio job (jerry), answered at once and
followed like any job (``/api/v1/jobs/<id>``, its audio, cancel, ``job_update`` events)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from g4l.jobs.records import JobStatus
from g4l.services.jobs import iso
from g4l.services.text_to_audio import LOOP_CFG, TextToAudioService, plan_loop
from g4l.web.api.access import http_caller
from g4l.web.api.jobs import links
from g4l.web.api.models import JobAccepted, TextToAudioRequest
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation


def blueprint(service: TextToAudioService) -> Blueprint:
    bp = Blueprint("api_text_to_audio", __name__, url_prefix=PREFIX)

    @bp.post("/text-to-audio")
    @operation("createTextToAudioJob", "Start a text-to-audio clip or loop (jerry: Stable Audio Open Small)",
               tags=["jobs"], body=TextToAudioRequest, responses={202: JobAccepted}, errors=(429, 503))
    def text_to_audio(body: TextToAudioRequest) -> Any:
        """Queues a job and answers at once; the result is a 44.1 kHz stereo 16-bit WAV, exactly `seconds_total` long (a
        loop: exactly bars x 4 x 60 / bpm seconds). Poll `links.self` (its `seed` is the seed used), download
        `links.audio`."""
        plan = plan_loop(body.prompt, body.bars, body.loop_type, body.negative_prompt) if body.loop else None
        spec = service.specs.text_to_audio(
            prompt=plan.prompt if plan else body.prompt, steps=body.steps, cfg_scale=body.cfg_scale,
            seconds_total=None if plan else body.seconds_total, seed=body.seed,
            negative_prompt=plan.negative_prompt if plan else body.negative_prompt,
            sampler_type=body.sampler_type, model=body.model, default_cfg=LOOP_CFG if plan else 1.0,
            loop_seconds=plan.seconds if plan else None)
        view = service.submit(http_caller(), spec)
        return JobAccepted(job_id=view.job.id, status=JobStatus.QUEUED, position=view.position or 0,
                           estimated_seconds=view.eta_seconds or 0.0, created_at=iso(view.job.created) or "",
                           message=f"Text-to-audio job queued (position {view.position}), seed {spec.seed}"
                           if view.position else f"Text-to-audio job queued, seed {spec.seed}",
                           links=links(view.job.id)), 202

    return bp
