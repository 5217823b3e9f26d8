"""jerry's routes (Stable Audio Open Small) in the upstream service's shapes, as the
gary4live device and the gary4juce plugin call them: under ``/audio/`` on the main port,
and without it on the jerry port (``G4L_JERRY_PORT``, 8005: localhost mode).

- ``POST /audio/generate`` | ``/generate``: a clip from text; the answer carries the audio
  (base64 in JSON, or the WAV itself with ``return_format: file``, the default).
- ``POST /audio/generate/loop`` | ``/generate/loop``: a loop of whole bars at the
  prompt's ``NNNbpm``.
- ``GET /audio/models/status`` | ``/models/status``: the models and their state
  (``model_details``, which gary4juce builds its model menu from).
- ``GET /audio/health``: jerry's own health; ``POST /models/switch``,
  ``/models/checkpoints``, ``GET /models/prompts``: the plugin's model menu calls.

Adapters only: the request's values go as JSON gave them to the spec resolver (which
checks every type and range), the job goes through :class:`TextToAudioService`. Every
refusal is ``{"success": false, "error": "<text>", "code": "<CODE>"}`` with its status
(400 for bad input, 500 for a failed generation): ``error`` is always a string (a device
printing an object shows ``[object Object]``); see :func:`plain_error_path`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pybase64
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from g4l.engine.families import STABLE_AUDIO
from g4l.errors import G4LError, Internal, InvalidRequest, TooLarge
from g4l.jobs.spec import GenerationSpec
from g4l.log import get_logger
from g4l.services.text_to_audio import LOOP_CFG, Clip, LoopPlan, TextToAudioService, detect_bpm, plan_loop
from g4l.web.api.access import http_caller, public
from g4l.web.api.routing import log_server_error

log = get_logger(__name__)

#: The paths whose every error answer has a plain-string ``error`` (see the module docstring).
PLAIN_ERROR_ROOTS = ("/audio", "/generate", "/models")
#: The model's render: 524,288 frames (about 11.9 s at 44.1 kHz); answers are trimmed to ``seconds_total``.
SAMPLE_SIZE = 524_288


def plain_error_path(path: str) -> bool:
    """Whether ``path`` is one of jerry's (its 404/405/413 answers keep the plain shape too)."""
    return any(path == root or path.startswith(root + "/") for root in PLAIN_ERROR_ROOTS)


def plain_error(exc: G4LError) -> Response:
    """A refusal or failure in the upstream shape, ``error`` a plain string."""
    body: dict[str, Any] = {"success": False, "error": exc.message, "code": exc.code}
    if "retry_after" in exc.details:
        body["retry_after"] = exc.details["retry_after"]
    resp = Response(orjson.dumps(body), status=exc.http_status, mimetype="application/json")
    if "retry_after" in exc.details:
        resp.headers["Retry-After"] = str(exc.details["retry_after"])
    return resp


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _body() -> dict[str, Any]:
    """The request's JSON object, whatever its Content-Type (upstream requires a JSON body)."""
    limit = current_app.config["G4L_SETTINGS"].max_json_kb * 1024
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
    data = request.get_data(cache=False)
    try:
        parsed = orjson.loads(data) if data.strip() else None
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("JSON body required (a JSON object)")
    return parsed


def blueprint(service: TextToAudioService) -> Blueprint:
    bp = Blueprint("compat_jerry", __name__)

    @bp.errorhandler(G4LError)
    def _g4l(exc: G4LError) -> Response:
        log_server_error(exc, "jerry request failed")
        return plain_error(exc)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return plain_error(http_error(exc))

    @bp.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("jerry route crashed", path=request.path)
        return plain_error(Internal("internal server error"))

    def spec_from(data: dict[str, Any], *, loop: LoopPlan | None = None) -> GenerationSpec:
        return service.specs.text_to_audio(
            prompt=loop.prompt if loop else data.get("prompt"), steps=data.get("steps"),
            cfg_scale=data.get("cfg_scale"), seconds_total=None if loop else data.get("seconds_total"),
            seed=data.get("seed"), negative_prompt=loop.negative_prompt if loop else data.get("negative_prompt"),
            sampler_type=data.get("sampler_type"), model_type=data.get("model_type"),
            finetune_repo=data.get("finetune_repo"), default_cfg=LOOP_CFG if loop else 1.0,
            loop_seconds=loop.seconds if loop else None)

    def return_format(data: dict[str, Any]) -> str:
        fmt = data.get("return_format", "file")
        if fmt not in ("file", "base64"):
            raise InvalidRequest("return_format must be 'file' or 'base64'")
        return str(fmt)

    def answer(clip: Clip, fmt: str, filename: str, extra: dict[str, Any] | None = None) -> Response:
        spec = clip.job.spec
        assert spec.text is not None
        if fmt == "file":
            resp = Response(clip.wav, mimetype="audio/wav")
            resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
            resp.headers["X-Seed"] = str(clip.seed)
            return resp
        seconds = spec.output_seconds
        took = max(clip.model_seconds, 1e-6)
        metadata = {
            "prompt": spec.description, "negative_prompt": spec.text.negative_prompt,
            "steps": spec.text.steps, "cfg_scale": spec.text.cfg_scale, "seed": clip.seed,
            "sample_rate": STABLE_AUDIO.sample_rate,
            "duration_seconds": int(seconds) if float(seconds).is_integer() else round(seconds, 3),
            "generation_time": round(clip.model_seconds, 2), "realtime_factor": round(seconds / took, 2),
            "detected_bpm": detect_bpm(spec.description), "device": clip.device, "model": spec.model,
            "sampler_type": spec.text.sampler_type, "job_id": clip.job.id, **(extra or {})}
        encoded = service.sessions.offload(_answer_json, clip.wav, metadata)
        return Response(encoded, mimetype="application/json")

    @bp.post("/audio/generate")
    @bp.post("/generate")
    def generate() -> Response:
        data = _body()
        fmt = return_format(data)
        spec = spec_from(data)
        clip = service.generate(http_caller(), spec)
        return answer(clip, fmt, f"stable_audio_{clip.seed}_{int(time.time())}.wav")

    @bp.post("/audio/generate/loop")
    @bp.post("/generate/loop")
    def generate_loop() -> Response:
        data = _body()
        fmt = return_format(data)
        plan = plan_loop(data.get("prompt"), data.get("bars"), data.get("loop_type"), data.get("negative_prompt"))
        spec = spec_from(data, loop=plan)
        clip = service.generate(http_caller(), spec)
        extra = {"original_prompt": data.get("prompt"), "loop_type": plan.loop_type, "bars": plan.bars,
                 "detected_bpm": plan.bpm, "loop_duration_seconds": round(plan.seconds, 3),
                 "seconds_per_bar": round(plan.seconds_per_bar, 3), "style_transfer": False}
        name = f"loop_{plan.loop_type}_{plan.bpm}bpm_{plan.bars}bars_{clip.seed}.wav"
        return answer(clip, fmt, name, extra)

    @bp.get("/audio/models/status")
    @bp.get("/models/status")
    def models_status() -> Response:
        states = service.models()
        default = service.default_model()
        details = {}
        for m in states:
            details[m.model] = {
                "type": "standard" if m.model == default else "finetune", "source": m.model,
                "device": m.device, "sample_rate": STABLE_AUDIO.sample_rate, "sample_size": SAMPLE_SIZE,
                "state": m.state, "error": m.reason, "default": m.default}
        loaded = [m.model for m in states if m.state == "loaded"]
        # The plugin takes the last of usage_order as the active model: the default one.
        order = [m for m in loaded if m != default] + [m for m in loaded if m == default]
        return _json({"success": True, "family": STABLE_AUDIO.name, "default_model": default,
                      "cache_status": {"loaded_models": loaded, "usage_order": order,
                                       "cache_utilization": f"{len(loaded)}/{len(states)}"},
                      "model_details": details, "max_models": len(states),
                      "cuda_available": any(m.device == "cuda" for m in states)})

    @bp.get("/audio/health")
    @public  # a status probe, as /health is
    def health() -> Response:
        states = service.models()
        default = next((m for m in states if m.default), None)
        if default is None:
            return _json({"status": "error", "model_loaded": False,
                          "error": "jerry is not enabled here: no Stable Audio model is allowed (G4L_MODELS)"}, 503)
        if default.state in ("failed", "unavailable"):
            return _json({"status": "error", "model_loaded": False, "model": default.model, "state": default.state,
                          "error": default.reason}, 503)
        return _json({"status": "healthy", "model_loaded": default.state == "loaded", "model": default.model,
                      "state": default.state, "device": default.device,
                      "model_info": {"sample_rate": STABLE_AUDIO.sample_rate, "sample_size": SAMPLE_SIZE}})

    @bp.post("/models/switch")
    @bp.post("/audio/models/switch")
    def switch() -> Response:
        data = _body()
        model = service.specs.text_model(data.get("model_type"), data.get("finetune_repo"))
        # Every allowed model is served per request: nothing to switch, only to check.
        return _json({"success": True, "model_type": data.get("model_type") or "standard", "model": model,
                      "config": {"sample_rate": STABLE_AUDIO.sample_rate, "sample_size": SAMPLE_SIZE},
                      "message": f"{model} is served here"})

    @bp.post("/models/checkpoints")
    @bp.post("/audio/models/checkpoints")
    def checkpoints() -> Response:
        data = _body()
        repo = data.get("finetune_repo")
        if not isinstance(repo, str) or not repo.strip():
            raise InvalidRequest("finetune_repo is required")
        service.specs.text_model("finetune", repo)  # refused unless the operator allows it
        return _json({"success": True, "repo": repo.strip(), "checkpoints": [], "count": 0})

    @bp.get("/models/prompts")
    @bp.get("/audio/models/prompts")
    def prompts() -> Response:
        return _json({"success": True, "prompts": None, "source": service.default_model() or "", "checkpoint": "",
                      "message": "no prompt suggestions for this model"})

    return bp


def http_error(exc: HTTPException) -> G4LError:
    """Flask's own error (404, 405, 413...) as a :class:`G4LError` with a stable code."""
    status = exc.code or 500
    if status == 404:
        message = f"no route {request.method} {request.path[:200]}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path[:200]}"
    else:
        message = exc.description or exc.name
    err = G4LError(message)
    err.code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}.get(
        status, "INVALID_REQUEST" if status < 500 else "INTERNAL")
    err.http_status = status
    return err


def _answer_json(wav: bytes, metadata: dict[str, Any]) -> bytes:
    """``{"success": true, "audio_base64", "metadata"}`` built around the base64 without
    copying it into a JSON string (runs in the thread pool)."""
    return b"".join((b'{"success":true,"audio_base64":"', pybase64.b64encode(wav), b'","metadata":',
                     orjson.dumps(metadata), b"}"))
