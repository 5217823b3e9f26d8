"""The generative HLS daemon's route: ``POST /generative/get_stream`` -> the absolute HLS
URL of an endless station of a genre (``curl ... | jq -r .stream.url``, then any HLS
player). A thin adapter of :class:`~g4l.services.stations.genres.GenreStreams`; the same
keys, station quota and errors as ``/api/v1/stations``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from g4l.context import Context
from g4l.services.stations.genres import GenreStreams
from g4l.web.api.access import http_caller
from g4l.web.api.routing import operation
from g4l.web.api.stream_models import StationStatus
from g4l.web.compat.models import GetStreamRequest, GetStreamResponse, StreamInfo
from g4l.web.urls import absolute

VERSION = "1.0"


def blueprint(ctx: Context) -> Blueprint:
    bp = Blueprint("api_generative", __name__)
    genres = GenreStreams(ctx)

    @bp.post("/generative/get_stream")
    @operation("getGenreStream", "The endless HLS stream of a genre (started, or the running one reused)",
               tags=["generative"], body=GetStreamRequest, responses={200: GetStreamResponse}, errors=(409, 503))
    def get_stream(body: GetStreamRequest) -> Any:
        """`params.temperature` is that API's 0-10 level: sampling temperature = 0.4 + 0.2 x level (3 -> 1.0, MusicGen's
        default). The same genre and parameters return the station already running. `stream.url` is absolute."""
        p = body.params
        st = genres.get_stream(http_caller(), genre=p.genre, level=p.temperature, adaptive=p.adaptive,
                               manual=p.manual, model=p.model)
        reused = st.pop("reused")
        info = StreamInfo(url=absolute(st["playlist_url"]), page_url=absolute(st["page_url"]),
                          station_id=st["station_id"], genre=" ".join(p.genre.split()),
                          temperature=st["temperature"], reused=reused)
        return GetStreamResponse(status="ok", version=body.version or VERSION, stream=info,
                                 station=StationStatus(**st))

    return bp
