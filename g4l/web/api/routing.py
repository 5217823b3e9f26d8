"""Declaring an HTTP operation once: the :func:`operation` decorator parses and validates
the request with its pydantic models, formats the reply, and leaves a description on the
view that :mod:`g4l.web.api.openapi` turns into the document.

Errors are JSON everywhere: ``{"error": {"code", "message"}}`` with the
:class:`~g4l.errors.G4LError`'s status, also for Flask's own 400/404/405/413/415 answers
and anything unexpected (500, logged). A 429 carries ``Retry-After``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymongo.errors
from flask import Flask, Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from g4l.errors import G4LError, InvalidRequest, NotFound, RequestTimeout, StoreUnavailable, TooLarge
from g4l.log import get_logger
from g4l.web.offload import offload

log = get_logger(__name__)

#: Stable codes for Flask's own HTTP errors.
_HTTP_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
               408: "REQUEST_TIMEOUT",
               413: "TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 416: "RANGE_NOT_SATISFIABLE"}


@dataclass
class Operation:
    """What the document says about one route (see :func:`operation`)."""

    operation_id: str
    summary: str
    tags: list[str]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, Any] = field(default_factory=dict)  # status -> model | (media type, description)
    errors: tuple[int, ...] = ()
    audio: bool = False  # the body may carry base64 audio (bigger size limit)
    description: str = ""
    optional_body: bool = False  # an empty body means the body model's defaults


def operation(operation_id: str, summary: str, *, tags: list[str], body: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, responses: dict[int, Any], errors: tuple[int, ...] = (),
              audio: bool = False, description: str = "", optional_body: bool = False) -> Callable:
    """Declare and implement an operation.

    The view is called with its path arguments plus ``body=`` (a validated ``body`` model)
    and/or ``query=`` (a validated ``query`` model). It returns ``(model, status)``, a
    model (200), or a ready :class:`flask.Response`.

    :param responses: success status -> response model, or ``(media type, description)``.
    :param errors: the 4xx/5xx statuses it may answer (401 and the body errors are added).
    :param audio: the body carries base64 audio: allow ``G4L_MAX_PAYLOAD_MB`` instead of
        ``G4L_MAX_JSON_KB`` and parse it off the event loop.
    :param optional_body: a request without a body gets the body model's defaults.
    :param description: the document's longer text (Markdown); by default the view's
        docstring, its lines joined by spaces (a blank line starts a paragraph).
    """

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(operation_id, summary, tags, body, query, responses, errors, audio,
                       description or _described(view), optional_body)

        @functools.wraps(view)
        def run(**kwargs: Any) -> Any:
            settings = current_app.config["G4L_SETTINGS"]
            if op.body is not None:
                limit = settings.max_payload_bytes + 64 * 1024 if op.audio else settings.max_json_kb * 1024
                kwargs["body"] = parse_body(op.body, limit, op.audio, op.optional_body)
            elif request.content_length:
                request.max_content_length = settings.max_json_kb * 1024
                request.get_data()  # drain (and size-check) a body nobody asked for
            if op.query is not None:
                kwargs["query"] = parse_query(op.query)
            result = view(**kwargs)
            if isinstance(result, Response):
                return result
            model, status = result if isinstance(result, tuple) else (result, 200)
            return Response(model.model_dump_json(), status=status, mimetype="application/json")

        run.g4l_operation = op  # type: ignore[attr-defined]
        return run

    return wrap


def _described(view: Callable[..., Any]) -> str:
    """A view's docstring as one line per paragraph (what the document's description is)."""
    paragraphs = inspect.cleandoc(view.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split("\n")) for p in paragraphs)


def parse_body(model: type[BaseModel], limit: int, big: bool, optional: bool = False) -> BaseModel:
    """Read and validate the JSON body (whatever its Content-Type: URLSession sends none
    by default); with ``optional``, no body at all means the model's defaults.
    :raises TooLarge, InvalidRequest:"""
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes; the limit is {limit} bytes")
    try:
        data = request.get_data(cache=False)
    except (OSError, ClientDisconnected):  # a stalled upload (g4l.web.http_server), or the client left
        raise RequestTimeout("the request body did not arrive in time "
                             f"(at least {current_app.config['G4L_SETTINGS'].http_body_min_kbps} KB/s)") from None
    if not data.strip():
        if optional:
            return model()
        raise InvalidRequest("the body is empty: send a JSON object")
    # Megabytes of base64 take a while to validate: keep the event loop free.
    result = offload(_validate, model, data) if big else _validate(model, data)
    if isinstance(result, ValidationError):
        raise InvalidRequest(describe(result))
    return result


def _validate(model: type[BaseModel], data: bytes) -> BaseModel | ValidationError:
    # Returned, not raised: the thread pool would log every raised error as a crash.
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        return exc


def parse_query(model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate({k: v for k, v in request.args.items()})
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def describe(error: ValidationError) -> str:
    """A short message naming the first bad field; never echoes the (maybe huge) value."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        text = f"the body is not valid JSON ({first.get('msg', '')})"
    elif kind == "model_type" and not where:
        text = "the body must be a JSON object"
    elif kind == "missing":
        text = f"missing required field '{where}'"
    else:
        text = f"invalid '{where}': {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid")
    extra = len(error.errors()) - 1
    if extra > 0:
        text += f" (and {extra} more problem{'s' if extra > 1 else ''})"
    return text[:500]


# ---------------------------------------------------------------- errors as JSON
def error_response(exc: G4LError) -> Response:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    raw_retry = exc.details.get("retry_after")
    retry_after = int(raw_retry) if isinstance(raw_retry, int | float) else None
    if retry_after is not None:
        body["retry_after"] = retry_after
    if exc.session_id:
        body["session_id"] = exc.session_id
    resp = jsonify({"error": body})
    resp.status_code = exc.http_status
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


#: ``app.config`` key: ``[(matches(path), format(error))]`` of route families that answer
#: errors in their clients' own shape, even errors raised before their views run (404, 405).
ERROR_SHAPES = "G4L_ERROR_SHAPES"


def error_shape(app: Flask, matches: Callable[[str], bool], fmt: Callable[[G4LError], Response]) -> None:
    """Make every error answer on the paths ``matches`` accepts ``fmt(error)``."""
    app.config.setdefault(ERROR_SHAPES, []).append((matches, fmt))


def _shaped(exc: G4LError) -> Response:
    for matches, fmt in current_app.config.get(ERROR_SHAPES, ()):
        if matches(request.path):
            return fmt(exc)
    return error_response(exc)


def log_server_error(exc: G4LError, event: str = "request failed") -> None:
    """Log an error that is the server's (5xx) with the request's path; a client's own
    mistake (4xx) is answered, not logged."""
    if exc.http_status >= 500:
        log.warning(event, path=request.path, code=exc.code, error=exc.message)


def install_errors(app: Flask) -> None:
    """Every error of the app answers JSON with a stable code."""

    @app.errorhandler(G4LError)
    def _g4l(exc: G4LError) -> Response:
        log_server_error(exc)
        return _shaped(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            return _shaped(NotFound(f"no route {request.method} {request.path[:200]}"))
        err = G4LError(exc.description or exc.name)
        err.code = _HTTP_CODES.get(status, "INVALID_REQUEST" if status < 500 else "INTERNAL")
        err.http_status = status
        resp = _shaped(err)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            resp.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return resp

    @app.errorhandler(pymongo.errors.PyMongoError)
    def _store(exc: pymongo.errors.PyMongoError) -> Response:  # the store is down or timed out
        log.warning("audio store unavailable", path=request.path, error=str(exc)[:200])
        return _shaped(StoreUnavailable(StoreUnavailable.RETRY))

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("route crashed", path=request.path)
        err = G4LError("internal server error")
        return _shaped(err)
