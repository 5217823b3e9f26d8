"""The public, token-guarded routes of live listening: ``/hls/<token>/index.m3u8`` and its
segments, ``/listen/<token>`` (the hls.js page), ``/listen/<token>/status``. Read-only:
nothing here can change a session or a station. Unknown tokens and any file name other
than the playlist or a segment answer 404 (so ``..`` and friends never reach the disk).
Listen links and stations are :mod:`g4l.web.api.streams`.

In production nginx can serve ``/hls/`` straight from ``G4L_HLS_DIR`` (docs/hls.md).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from g4l.context import Context
from g4l.log import get_logger
from g4l.services.listen import ListenService
from g4l.web import pages
from g4l.web.api import access
from g4l.web.offload import offload

log = get_logger(__name__)

STATIC_DIR = pages.STATIC_DIR
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
_FILE_RE = re.compile(r"^(index\.m3u8|seg_\d{6,9}\.ts)$")
_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
         "Access-Control-Allow-Headers": "Range, Content-Type", "Access-Control-Expose-Headers": "Content-Length"}


def _not_found() -> Response:
    resp = Response("not found\n", status=404, mimetype="text/plain")
    resp.headers.update(_CORS)
    return resp


def _listener_id() -> str:
    """Who is listening, roughly: address + user agent (no cookie, no identity)."""
    raw = f"{request.remote_addr}|{request.headers.get('User-Agent', '')}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # not written yet, or already slid out of the window and deleted
        return None


def hls_blueprint(ctx: Context) -> Blueprint:
    """The public, token-guarded routes: HLS files, listen page, stream status."""
    bp = Blueprint("hls", __name__, static_folder=str(STATIC_DIR), static_url_path="/listen-static")
    listen = ListenService(ctx)
    root = ctx.settings.hls_path

    @bp.route("/hls/<token>/<name>", methods=["GET", "HEAD", "OPTIONS"])
    def hls_file(token: str, name: str) -> Response:
        if not _FILE_RE.match(name) or listen.resolve(token) is None:
            return _not_found()
        if request.method == "OPTIONS":
            return Response(status=204, headers=_CORS)
        data = offload(_read, root / token / name)
        if data is None:
            return _not_found()
        playlist = name.endswith(".m3u8")
        resp = Response(data, mimetype=PLAYLIST_TYPE if playlist else SEGMENT_TYPE)
        resp.headers.update(_CORS)
        if playlist:
            resp.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
            listen.touch(token, _listener_id())
        else:  # a segment never changes once listed
            resp.headers["Cache-Control"] = "public, max-age=60, immutable"
        return resp

    @bp.route("/listen/<token>")
    def page(token: str) -> Response:
        if listen.resolve(token) is None:
            return _not_found()
        resp = Response(pages.render("listen.html", TOKEN=token), mimetype="text/html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @bp.route("/listen/<token>/status")
    def status(token: str) -> Response:
        info = listen.status(token)
        if info is None:
            return _not_found()
        resp = jsonify(info)
        resp.headers.update(_CORS)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    return bp


def install(app: Any, ctx: Context) -> None:
    """Register the ``hls`` blueprint; it needs no API key (the token guards it)."""
    access.PUBLIC_BLUEPRINTS.add("hls")
    app.register_blueprint(hls_blueprint(ctx))
