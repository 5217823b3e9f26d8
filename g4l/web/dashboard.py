"""The operator's station pages: ``/stations`` (the list), ``/stations/<id>/dashboard``
(buffer plot, health, prompts, speed, listeners, outputs, errors; it polls every few
seconds) and ``/stations/<id>/recordings`` (the archive, with downloads).

A browser cannot send the ``X-API-Key`` header on a plain navigation, so these pages take
the key once, from a form (``POST /stations/login``) or from ``?key=`` (then redirected
away, so it stays in neither the address bar nor the history), and keep it in an
HttpOnly cookie scoped to ``/stations`` that page scripts cannot read. The pages poll
read-only JSON twins beside them (``/stations/<id>/status.json`` is the
``GET /api/v1/stations/{id}`` model, ``history.json`` the ``/history`` one) that the
cookie opens; nothing here changes a station. With API keys on, only an operator key
(``G4L_OPERATOR_KEYS``) gets in: no key or an unknown one answers 401 with a key form,
another key 403. A station stays its owner's (:meth:`Caller.can_see`): an operator sees
the stations its key started. With keys off, the pages are open.

Every value is written into the page by script with ``textContent``, never as HTML, and
the pages forbid inline scripts (Content-Security-Policy): a prompt is always text.
"""

from __future__ import annotations

import urllib.parse

from flask import Blueprint, Flask, Response, g, redirect, request
from pydantic import BaseModel
from werkzeug.wrappers import Response as BaseResponse

from g4l.context import Context
from g4l.errors import Forbidden, G4LError, StationNotFound, Unauthorized
from g4l.services.auth import HEADER, ApiKeys, Caller
from g4l.services.stations.service import StationService
from g4l.web import pages
from g4l.web.api import access
from g4l.web.api.download import send_blob
from g4l.web.api.routing import error_response, parse_query
from g4l.web.api.stream_models import (
    Recording,
    RecordingList,
    StationHistory,
    StationHistoryQuery,
    StationList,
    StationStatus,
)

STATIC_DIR = pages.STATIC_DIR / "dashboard"
#: The cookie that carries the operator's key between page loads (HttpOnly: no script reads it).
COOKIE = "g4l_operator_key"
COOKIE_PATH = "/stations"
COOKIE_MAX_AGE_S = 12 * 3600
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_OPEN = {"dashboard.static", "dashboard.login", "dashboard.logout"}


def _secure(resp: BaseResponse) -> BaseResponse:
    resp.headers.update(_HEADERS)
    return resp


def _page(name: str, status: int = 200, **values: str) -> BaseResponse:
    """A page of :data:`STATIC_DIR` (:func:`g4l.web.pages.render`: HTML-escaped values)."""
    html = pages.render(f"{STATIC_DIR.name}/{name}", **values)
    return _secure(Response(html, status=status, mimetype="text/html"))


def _json(model: BaseModel) -> BaseResponse:
    return _secure(Response(model.model_dump_json(), mimetype="application/json"))


def _wants_json() -> bool:
    return request.path.endswith(".json") or request.endpoint == "dashboard.recording"


def _local(target: str | None) -> str:
    """Where to go after the key form: a path of these pages, never another site."""
    if target and target.startswith(COOKIE_PATH) and not target.startswith("//") and "\\" not in target:
        return target
    return COOKIE_PATH


def _refused(exc: G4LError) -> BaseResponse:
    """401 / 403 / 404: JSON for the data routes, a page (with the key form) for people."""
    if _wants_json():
        return _secure(error_response(exc))
    titles = {401: "The operator's key is needed", 403: "Not an operator key", 404: "No such station"}
    return _page("denied.html", exc.http_status, TITLE=titles.get(exc.http_status, "Refused"), MESSAGE=exc.message,
                 NEXT=request.path)


def dashboard_blueprint(ctx: Context, api_keys: ApiKeys) -> Blueprint:
    """The pages, their JSON twins, the key form and the recording downloads."""
    bp = Blueprint("dashboard", __name__, static_folder=str(STATIC_DIR), static_url_path="/stations-static")
    stations = StationService(ctx)

    def with_cookie(resp: BaseResponse, key: str) -> BaseResponse:
        resp.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path=COOKIE_PATH, httponly=True, samesite="Lax",
                        secure=request.is_secure)
        return resp

    @bp.before_request
    def _operator_only() -> BaseResponse | None:
        if request.endpoint in _OPEN:
            return None
        if "key" in request.args:  # a link with the key: keep it in the cookie, drop it from the URL
            key = request.args.get("key", "")
            try:
                api_keys.caller(key, request.remote_addr)
            except Unauthorized as exc:
                return _refused(exc)
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "key"]
            target = request.path + ("?" + urllib.parse.urlencode(rest) if rest else "")
            return _secure(with_cookie(redirect(target, 303), key))
        presented = request.headers.get(HEADER) or request.cookies.get(COOKIE)
        try:
            caller = api_keys.caller(presented, request.remote_addr)
        except Unauthorized as exc:
            return _refused(Unauthorized("this page needs the operator's API key") if not presented else exc)
        if not caller.operator:
            return _refused(Forbidden("this key is not an operator key: these pages need one of G4L_OPERATOR_KEYS"))
        g.operator = caller
        return None

    @bp.errorhandler(StationNotFound)
    def _not_found(exc: StationNotFound) -> BaseResponse:
        return _refused(exc)

    def operator() -> Caller:
        return g.operator

    # ---------------------------------------------------------------- the key form
    @bp.post("/stations/login")
    def login() -> BaseResponse:
        key = (request.form.get("key") or "").strip()
        target = _local(request.form.get("next"))
        try:
            api_keys.caller(key, request.remote_addr)
        except Unauthorized as exc:
            return _page("denied.html", 401, TITLE="The operator's key is needed", MESSAGE=exc.message, NEXT=target)
        return _secure(with_cookie(redirect(target, 303), key))

    @bp.get("/stations/logout")
    def logout() -> BaseResponse:
        resp = redirect(COOKIE_PATH, 303)
        resp.delete_cookie(COOKIE, path=COOKIE_PATH)
        return _secure(resp)

    # ---------------------------------------------------------------- pages
    @bp.get("/stations")
    def list_page() -> BaseResponse:
        return _page("stations.html")

    @bp.get("/stations/<station_id>/dashboard")
    def dashboard_page(station_id: str) -> BaseResponse:
        stations.require(station_id, operator())
        return _page("dashboard.html")

    @bp.get("/stations/<station_id>/recordings")
    def recordings_page(station_id: str) -> BaseResponse:
        stations.require(station_id, operator())
        return _page("recordings.html")

    # ---------------------------------------------------------------- what the pages poll
    @bp.get("/stations/list.json")
    def list_data() -> BaseResponse:
        return _json(StationList(stations=[StationStatus(**st) for st in stations.list(operator())]))

    @bp.get("/stations/<station_id>/status.json")
    def status_data(station_id: str) -> BaseResponse:
        return _json(StationStatus(**stations.get(station_id, operator())))

    @bp.get("/stations/<station_id>/history.json")
    def history_data(station_id: str) -> BaseResponse:
        query = parse_query(StationHistoryQuery)
        assert isinstance(query, StationHistoryQuery)
        return _json(StationHistory(**stations.buffer_history(station_id, operator(), query.since)))

    @bp.get("/stations/<station_id>/recordings.json")
    def recordings_data(station_id: str) -> BaseResponse:
        found = stations.list_recordings(station_id, operator())
        return _json(RecordingList(recordings=[
            Recording(**rec, url=f"/stations/{station_id}/recordings/{rec['recording_id']}") for rec in found]))

    @bp.get("/stations/<station_id>/recordings/<recording_id>")
    def recording(station_id: str, recording_id: str) -> BaseResponse:
        blob = stations.recording_blob(station_id, recording_id, operator())
        return _secure(send_blob(ctx.blobs, blob, f"{recording_id}.m4a", mimetype="audio/mp4"))

    return bp


def install(app: Flask, ctx: Context) -> None:
    """Register the pages; they check the operator's key themselves (header or cookie)."""
    access.PUBLIC_BLUEPRINTS.add("dashboard")
    app.register_blueprint(dashboard_blueprint(ctx, ApiKeys(ctx.settings)))

