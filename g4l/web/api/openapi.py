"""The OpenAPI 3.1 document, assembled from the app's own routes and models, and the
interactive docs page (Swagger UI, vendored under ``g4l/web/static/docs``; no CDN).

Every URL rule whose view carries an :class:`~g4l.web.api.routing.Operation` becomes an
operation; its schemas come from the same pydantic models that validate requests
(``model_json_schema``, ``$defs`` moved to ``components/schemas``). Operator settings
that bound values (the model allowlist, ``G4L_MAX_GENERATE_SECONDS``) are written into the
served document. Rules under ``/api/v1`` without an operation are listed by
:func:`undocumented` (a test keeps that list empty).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, request, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from g4l.engine.families import MUSICGEN, models_of
from g4l.jobs import kinds
from g4l.services.auth import HEADER
from g4l.settings import Settings
from g4l.web.api.models import ErrorResponse, GenerateRequest
from g4l.web.api.routing import Operation

PREFIX = "/api/v1"
#: Blueprints outside PREFIX whose every route is in the document too (the brief's APIs).
DOCUMENTED_BLUEPRINTS = ("api_realtime.", "api_generative.", "api_ws.")
DOCS_DIR = Path(__file__).resolve().parents[1] / "static" / "docs"
_FLASK_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_ERROR_TEXT = {400: "Malformed request (INVALID_REQUEST, INVALID_AUDIO, MODEL_NOT_ALLOWED)",
               401: "Missing or unknown API key (UNAUTHORIZED)",
               403: "The key may not do this: an operator action (FORBIDDEN)",
               404: "Unknown id, or one that belongs to another key (NOT_FOUND, SESSION_NOT_FOUND, "
                    "STATION_NOT_FOUND)",
               409: "Not possible in the current state (BUSY, NOTHING_TO_RETRY, NOT_READY, STATIONS_FULL)",
               413: "Body over the size limit (TOO_LARGE)",
               416: "Range outside the file (RANGE_NOT_SATISFIABLE)",
               429: "Too many generation requests (RATE_LIMITED); wait Retry-After seconds",
               503: "The queue is full (QUEUE_FULL), or no worker could load the model (MODEL_UNAVAILABLE)"}

#: The result events of the kinds a device drives (the kind table).
_RESULT_EVENTS = " / ".join(f"`{k.events.result}`" for k in kinds.with_events() if k.events is not None)
WS_EVENTS_DOC = """
### Live progress over Socket.IO
Connect a Socket.IO v5 client to this server (with `auth: {"api_key": "..."}` when keys are
configured) and emit `subscribe` with `{"job_id": "..."}` or `{"session_id": "..."}`.
Job subscribers receive `job_update {job_id, session_id, kind, status, progress (0..1),
position, error}` on every change and `job_completed {job_id, status, audio_url}` at the
end; session subscribers receive the device events (`progress_update`, `queue_status`,
""" + _RESULT_EVENTS + """, `error`). `unsubscribe` takes the
same payload. Failures arrive as `error {message, code}`.
"""


def _openapi_path(rule: str) -> str:
    return _FLASK_PARAM.sub(r"{\1}", rule)


def operations(app: Flask) -> list[tuple[str, str, Operation]]:
    """(OpenAPI path, method, operation) of every documented rule, in a stable order."""
    found = []
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions.get(rule.endpoint), "g4l_operation", None)
        if op is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((_openapi_path(rule.rule), method.lower(), op))
    return sorted(found, key=lambda t: (t[0], t[1]))


def undocumented(app: Flask) -> list[str]:
    """``METHOD /path`` of every /api/v1 route the document does not describe."""
    missing = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        ours = rule.rule.startswith(PREFIX) or rule.endpoint.startswith(DOCUMENTED_BLUEPRINTS)
        if not ours or getattr(view, "g4l_operation", None) is not None \
                or getattr(view, "g4l_undocumented_ok", False):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            missing.append(f"{method} {rule.rule}")
    return missing


def _restrict(schema: dict[str, Any], prop: str, **constraints: Any) -> None:
    """Add constraints to a (maybe nullable) property of a component schema."""
    target = schema.get("properties", {}).get(prop)
    if target is None:
        return
    branches = [b for b in target.get("anyOf", []) if b.get("type") != "null"] or [target]
    for branch in branches:
        branch.update(constraints)


def build(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``."""
    ops = operations(app)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for _, _, op in ops:
        if op.body is not None:
            models.append((op.body, "validation"))
        for resp in op.responses.values():
            if isinstance(resp, type) and issubclass(resp, BaseModel):
                models.append((resp, "serialization"))
    models = list(dict.fromkeys(models))
    refs, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    gen = schemas.get(GenerateRequest.__name__)
    musicgens = models_of(MUSICGEN, settings.models, settings.model_path_map)
    if gen is not None:
        _restrict(gen, "duration", maximum=settings.max_generate_seconds)
        _restrict(gen, "model", enum=musicgens)
    for name in ("BangRequest", "ContinueRequest", "RetryRequest"):
        if name in schemas:
            _restrict(schemas[name], "model_name", enum=musicgens)
    for name in ("StationRequest", "GenreParams", "StreamStartRequest"):
        if name in schemas:
            _restrict(schemas[name], "model", enum=musicgens)
    if "StreamStartRequest" in schemas:
        _restrict(schemas["StreamStartRequest"], "duration", maximum=settings.max_generate_seconds)

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]  # type: ignore[index]

    error_content = {"application/json": {"schema": ref(ErrorResponse, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in ops:
        doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": op.tags}
        if op.description:
            doc["description"] = op.description
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
                  for name in re.findall(r"{([^}]+)}", path)]
        if op.query is not None:
            qs = op.query.model_json_schema()
            for name, prop in qs.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k != "title"}
                entry = {"name": name, "in": "query", "required": name in qs.get("required", []), "schema": prop}
                if "description" in prop:
                    entry["description"] = prop.pop("description")
                params.append(entry)
        if params:
            doc["parameters"] = params
        if op.body is not None:
            doc["requestBody"] = {"required": not op.optional_body,
                                  "content": {"application/json": {"schema": ref(op.body, "validation")}}}
        responses: dict[str, Any] = {}
        for status, resp in sorted(op.responses.items()):
            if isinstance(resp, tuple):
                media, text = resp
                responses[str(status)] = {"description": text,
                                          "content": {media: {"schema": {"type": "string",
                                                                         "contentMediaType": media}}}}
            else:
                responses[str(status)] = {"description": (resp.__doc__ or resp.__name__).strip().splitlines()[0],
                                          "content": {"application/json": {"schema": ref(resp, "serialization")}}}
        statuses = set(op.errors) | {401}
        if op.body is not None or op.query is not None:
            statuses |= {400}
        if op.body is not None:
            statuses |= {413}
        if "{" in path:
            statuses |= {404}
        for status in sorted(statuses):
            entry = {"description": _ERROR_TEXT.get(status, "Error"), "content": error_content}
            if status == 429:
                entry["headers"] = {"Retry-After": {"description": "Seconds to wait", "required": True,
                                                    "schema": {"type": "integer", "minimum": 0}}}
            responses[str(status)] = entry
        doc["responses"] = responses
        paths.setdefault(path, {})[method] = doc

    description = ("Jobs, polling, cancellation and the HTTP twins of the device's Socket.IO events. "
                   "Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code. "
                   + ("Every route needs an API key in the `X-API-Key` header." if settings.api_keys
                      else "This server needs no API key.") + "\n" + WS_EVENTS_DOC)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "g4l HTTP API", "version": "1.0.0", "description": description},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": HEADER}},
        },
        "tags": [{"name": "jobs", "description": "Generation jobs for DAW clients"},
                 {"name": "sessions", "description": "HTTP twins of the device protocol"},
                 {"name": "history", "description": "A session's versions: undo, redo, checkout, branches"},
                 {"name": "transform", "description": "terry (MelodyFlow): a take rewritten in a preset's style"},
                 {"name": "prompts", "description": "Prompt builder"},
                 {"name": "listen", "description": "Live listening over HLS"},
                 {"name": "stations", "description": "Endless generative stations"},
                 {"name": "generative", "description": "The generative HLS daemon's get_stream"},
                 {"name": "realtime", "description": "The realtime HLS API: one generation streamed live"},
                 {"name": "tellurstori", "description": "The TellUrStori service's status, download and WS /ws"}],
    }
    if settings.api_keys:
        document["security"] = [{"ApiKeyAuth": []}]
    return document


def _docs_public_if_configured(view: Any) -> Any:
    view.g4l_undocumented_ok = True
    return view


def blueprint(settings: Settings) -> Blueprint:
    """``/api/v1/openapi.json`` and the docs page at ``/api/v1/docs/``."""
    bp = Blueprint("api_docs", __name__, url_prefix=PREFIX)
    cache: dict[str, Any] = {}

    @bp.get("/openapi.json")
    def openapi_json() -> Response:
        if "doc" not in cache:
            cache["doc"] = build(current_app, settings)
        return jsonify(cache["doc"])

    @bp.get("/docs")
    def docs_redirect() -> Response:
        return redirect(request.path + "/", code=308)  # type: ignore[return-value]

    @bp.get("/docs/")
    def docs_page() -> Response:
        resp = send_from_directory(DOCS_DIR, "index.html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @bp.get("/docs/<path:name>")
    def docs_asset(name: str) -> Response:
        return send_from_directory(DOCS_DIR, name, max_age=3600)

    views: tuple[Any, ...] = (openapi_json, docs_redirect, docs_page, docs_asset)
    for view in views:
        _docs_public_if_configured(view)
        if settings.docs_public:
            view.g4l_public = True
    return bp
