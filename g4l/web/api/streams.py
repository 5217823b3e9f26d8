"""``/api/v1`` routes of live listening: a session's listen link, stations, and the
operator's stop-idle-streams call. The HLS files themselves are :mod:`g4l.web.listen`."""

from __future__ import annotations

import binascii
from typing import Any

import pybase64
from flask import Blueprint

from g4l.errors import Forbidden, InvalidRequest
from g4l.services import idle_streams
from g4l.services.listen import ListenService
from g4l.services.sessions import SessionService
from g4l.services.stations.service import StationService
from g4l.web.api.access import http_caller
from g4l.web.api.download import file_responses, send_blob
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation
from g4l.web.api.stream_models import (
    CleanupRequest,
    CleanupResponse,
    ListenLink,
    OutputCreated,
    OutputRequest,
    OutputStopped,
    Recording,
    RecordingList,
    StationCreated,
    StationHistory,
    StationHistoryQuery,
    StationList,
    StationRequest,
    StationStatus,
    StationStopped,
)


def blueprint(service: SessionService) -> Blueprint:
    bp = Blueprint("api_streams", __name__, url_prefix=PREFIX)
    ctx = service.ctx
    listen = ListenService(ctx)
    stations = StationService(ctx)

    @bp.post("/sessions/<session_id>/listen")
    @operation("getSessionListenLink", "A read-only listen link of the session (live HLS)", tags=["listen"],
               responses={200: ListenLink})
    def session_listen(session_id: str) -> Any:
        """Twin of `get_listen_url`. The same link every time; it lets anyone listen, never continue or crop."""
        link = listen.session_link(service.require(session_id, http_caller()))
        return ListenLink(**link)

    @bp.post("/stations")
    @operation("createStation", "Start an endless generative station", tags=["stations"], body=StationRequest,
               responses={201: StationCreated}, errors=(409, 503))
    def create_station(body: StationRequest) -> Any:
        """With API keys on, each key runs at most `G4L_STATIONS_PER_KEY` stations and sees only its own."""
        prompts = [p for p in (body.prompt or body.genre,) if p] + list(body.prompts or [])
        created = stations.create(http_caller(), prompts=prompts, model=body.model, temperature=body.temperature,
                                  top_k=body.top_k, cfg_coef=body.cfg_coef, rotate_every_s=body.rotate_every_s or 0.0,
                                  name=body.name, record=body.record, buffer_thresholds_s=body.buffer_thresholds_s,
                                  buffer_resume_s=body.buffer_resume_s, chunk_seconds=body.chunk_seconds,
                                  transition=body.transition)
        return StationCreated(**created), 201

    @bp.get("/stations")
    @operation("listStations", "The running stations (with API keys on: this key's)", tags=["stations"],
               responses={200: StationList})
    def list_stations() -> Any:
        return StationList(stations=[StationStatus(**st) for st in stations.list(http_caller())])

    @bp.get("/stations/<station_id>")
    @operation("getStation", "A station's status: buffer, prompts, listeners, errors", tags=["stations"],
               responses={200: StationStatus})
    def get_station(station_id: str) -> Any:
        return StationStatus(**stations.get(station_id, http_caller()))

    @bp.get("/stations/<station_id>/history")
    @operation("getStationHistory", "A station's buffer over time (samples for a plot)", tags=["stations"],
               query=StationHistoryQuery, responses={200: StationHistory}, errors=(404,))
    def station_history(station_id: str, query: StationHistoryQuery) -> Any:
        """One sample every `G4L_STATION_HISTORY_EVERY_S` (seconds buffered and health state), the last
        `G4L_STATION_HISTORY_HOURS`; `since` returns only newer ones."""
        return StationHistory(**stations.buffer_history(station_id, http_caller(), query.since))

    @bp.delete("/stations/<station_id>")
    @operation("stopStation", "Stop a station (its stream and generations)", tags=["stations"],
               responses={200: StationStopped})
    def stop_station(station_id: str) -> Any:
        return StationStopped(**stations.stop(station_id, http_caller()))

    @bp.post("/stations/<station_id>/outputs")
    @operation("addStationOutput", "Push the station to an RTMP(S) server (YouTube Live, Twitch...)",
               tags=["stations"], body=OutputRequest, responses={201: OutputCreated}, errors=(404, 409), audio=True)
    def add_output(station_id: str, body: OutputRequest) -> Any:
        """One long-lived ffmpeg sends H.264 + AAC in FLV (`G4L_RTMP_*` settings) and reconnects with backoff when the
        server drops it; `GET /stations/{id}` reports its state. The stream key is never returned or logged. At most
        `G4L_STATION_MAX_OUTPUTS` per station (409 `OUTPUTS_FULL`)."""
        visual = service.offload(_b64, body.visual) if body.visual else None
        if body.visual and visual is None:
            raise InvalidRequest("visual is not valid base64")
        created = stations.add_output(station_id, http_caller(), url=body.url, stream_key=body.stream_key,
                                      visual=visual)
        return OutputCreated(**created), 201

    @bp.delete("/stations/<station_id>/outputs/<output_id>")
    @operation("stopStationOutput", "Stop one RTMP output of a station", tags=["stations"],
               responses={200: OutputStopped}, errors=(404,))
    def stop_output(station_id: str, output_id: str) -> Any:
        return OutputStopped(**stations.stop_output(station_id, output_id, http_caller()))

    @bp.get("/stations/<station_id>/recordings")
    @operation("listStationRecordings", "A station's recordings (files of G4L_RECORDING_SECONDS)",
               tags=["stations"], responses={200: RecordingList}, errors=(404,))
    def list_recordings(station_id: str) -> Any:
        """Stations started with `record: true`. Files older than `G4L_RECORDING_RETENTION_HOURS` are deleted."""
        found = stations.list_recordings(station_id, http_caller())
        return RecordingList(recordings=[
            Recording(**rec, url=f"{PREFIX}/stations/{station_id}/recordings/{rec['recording_id']}") for rec in found])

    @bp.get("/stations/<station_id>/recordings/<recording_id>")
    @operation("getStationRecording", "Download one recording (MP4 audio; Range supported)", tags=["stations"],
               responses=file_responses("audio/mp4", "The recording (AAC in MP4)"), errors=(404, 416))
    def get_recording(station_id: str, recording_id: str) -> Any:
        blob = stations.recording_blob(station_id, recording_id, http_caller())
        return send_blob(ctx.blobs, blob, f"{recording_id}.m4a", mimetype="audio/mp4")

    @bp.post("/listen/cleanup")
    @operation("stopIdleStreams", "Stop every stream nobody listens to (operator)", tags=["listen"],
               body=CleanupRequest, optional_body=True, responses={200: CleanupResponse}, errors=(403,))
    def cleanup(body: CleanupRequest) -> Any:
        """Needs an operator key (`G4L_OPERATOR_KEYS`) when API keys are on. The packager also stops streams idle for
        `G4L_HLS_IDLE_TIMEOUT_S` by itself."""
        if not http_caller().operator:
            raise Forbidden("stopping idle streams needs an operator key")
        return CleanupResponse(stopped=idle_streams.stop_idle(ctx, body.max_idle_s))

    return bp


def _b64(text: str) -> bytes | None:
    """Strict base64 (a ``data:`` URI prefix tolerated); None when it is not."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return pybase64.b64decode(text, validate=True) or None
    except (binascii.Error, ValueError):
        return None
