"""JSON Schema of every event payload, generated from the pydantic models.

``python -m plugin_protocol.schema`` rewrites ``plugin_protocol/schema.json``; a test
checks the committed file is current.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from plugin_protocol import events, payloads

SCHEMA_PATH = Path(__file__).with_name("schema.json")

#: Event name -> payload model, both directions.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    events.PROCESS_AUDIO: payloads.ProcessAudioRequest,
    events.CONTINUE_MUSIC: payloads.ContinueMusicRequest,
    events.RETRY_MUSIC: payloads.RetryMusicRequest,
    events.UPDATE_CROPPED_AUDIO: payloads.UpdateCroppedAudio,
    events.CLEANUP_SESSION: payloads.SessionRef,
    events.VERIFY_SESSION: payloads.SessionRef,
    events.REQUEST_PROGRESS_STATUS: payloads.ProgressStatusRequest,
    events.BEGIN_RESTORE_AUDIO: payloads.BeginRestoreAudio,
    events.AUDIO_CHUNK: payloads.AudioChunk,
    events.PROCESS_AUDIO_RECEIVED: payloads.Ack,
    events.CONTINUE_MUSIC_RECEIVED: payloads.Ack,
    events.RETRY_MUSIC_RECEIVED: payloads.Ack,
    events.PROCESSING_STARTED: payloads.Ack,
    events.QUEUE_STATUS: payloads.QueueStatus,
    events.PROGRESS_UPDATE: payloads.ProgressUpdate,
    events.AUDIO_PROCESSED: payloads.AudioResult,
    events.MUSIC_CONTINUED: payloads.AudioResult,
    events.MUSIC_RETRIED: payloads.AudioResult,
    events.UPDATE_CROPPED_AUDIO_COMPLETE: payloads.Message,
    events.CLEANUP_COMPLETE: payloads.Message,
    events.RESTORE_COMPLETE: payloads.Message,
    events.SESSION_STATUS: payloads.SessionStatus,
    events.READY_FOR_CHUNKS: payloads.ReadyForChunks,
    events.CHUNK_RECEIVED: payloads.ChunkReceived,
    events.CHUNKS_MISSING: payloads.ChunksMissing,
    events.UNDO: payloads.SessionRef,
    events.REDO: payloads.SessionRef,
    events.CHECKOUT: payloads.CheckoutRequest,
    events.HISTORY: payloads.SessionRef,
    events.UNDO_TRANSFORM: payloads.SessionRef,
    events.UNDO_COMPLETE: payloads.VersionAudio,
    events.REDO_COMPLETE: payloads.VersionAudio,
    events.CHECKOUT_COMPLETE: payloads.VersionAudio,
    events.HISTORY_RESULT: payloads.HistoryPayload,
    events.TRANSFORM_UNDONE: payloads.VersionAudio,
    events.TRANSFORM_AUDIO: payloads.TransformAudioRequest,
    events.TRANSFORM_AUDIO_RECEIVED: payloads.Ack,
    events.AUDIO_TRANSFORMED: payloads.TransformResult,
    events.ERROR: payloads.ErrorPayload,
}


def build() -> dict:
    """One document: ``events`` maps each event name to its payload's JSON Schema."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "g4l device protocol (Socket.IO event payloads)",
        "events": {name: model.model_json_schema() for name, model in sorted(EVENT_MODELS.items())},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
