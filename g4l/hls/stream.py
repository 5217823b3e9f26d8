"""One live stream: its audio buffer, its encoder and its playlist, in one folder.

The folder is ``<hls dir>/<listen token>/``; the web (or nginx) serves it as
``/hls/<listen token>/``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from g4l import audio
from g4l.hls.buffer import CHANNELS, RATE, PcmBuffer
from g4l.hls.encoder import SegmentEncoder
from g4l.hls.playlist import LivePlaylist
from g4l.log import get_logger
from g4l.settings import Settings

log = get_logger(__name__)


def to_stream_format(samples: np.ndarray, rate: int) -> np.ndarray:
    """Any ``(channels, frames)`` audio as the stream's 48 kHz stereo float32."""
    return audio.to_channels(audio.resample(samples, rate, RATE), CHANNELS)


class LiveStream:
    """A running stream of one session or station.

    :param token: the listen token (folder name and log name).
    :param kind: ``"session"``, ``"station"`` or ``"job"`` (a one-shot).
    :param ref: the session or station id.
    :param settings: segment length, bitrate, crossfade, filler.
    """

    def __init__(self, token: str, kind: str, ref: str, settings: Settings) -> None:
        self.token, self.kind, self.ref = token, kind, ref
        self.directory: Path = settings.hls_path / token
        self.directory.mkdir(parents=True, exist_ok=True)
        self.crossfade_frames = int(settings.hls_crossfade_ms * RATE / 1000)
        self.buffer = PcmBuffer(self.crossfade_frames, settings.hls_idle_fill)
        self.playlist = LivePlaylist(self.directory, settings.hls_segment_s, settings.hls_window_segments)
        self.log = log.bind(stream=token[:8], kind=kind, **{f"{kind}_id": ref})
        self.encoder = SegmentEncoder(self.directory, self.buffer, self.playlist, segment_s=self.playlist.segment_s,
                                      bitrate_kbps=settings.hls_bitrate_kbps, on_segment=self._on_segment,
                                      stream=token[:8])
        self.started = time.time()
        self.last_audio = 0.0
        self.last_segment = 0.0
        self.segments = 0
        #: Stream seconds at which recent appended audio starts (joins), newest last.
        self.joins: list[float] = []
        #: Jobs whose audio was queued (a one-shot stream plays its job's result once).
        self.played_jobs: set[str] = set()

    def start(self) -> None:
        """Start encoding (silence until audio is appended)."""
        self.encoder.start()
        self.log.info("stream started", directory=str(self.directory),
                      resumed_at_sequence=self.playlist.next_sequence or None)

    def stop(self, *, delete: bool) -> None:
        """Stop encoding; with ``delete`` its segments and playlist are removed too."""
        self.encoder.stop()
        if delete:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.log.info("stream stopped", deleted=delete, segments=self.segments)

    def append(self, samples: np.ndarray, rate: int, *, overlap_s: float = 0.0,
               meta: dict[str, Any] | None = None) -> float:
        """Queue audio (any rate/channels) after what is queued; returns its start in
        stream seconds. ``overlap_s``: leading seconds that re-state the queue's end."""
        x = to_stream_format(samples, rate)
        start = self.buffer.append(x, overlap_frames=int(round(overlap_s * RATE)), meta=meta)
        self.last_audio = time.time()
        self.joins = [*self.joins[-19:], round((start + self.encoder.prefill_frames) / RATE, 3)]
        self.log.info("audio queued", seconds=round(x.shape[1] / RATE, 2),
                      buffered_s=round(self.buffer.buffered_seconds, 2), starts_at_s=round(start / RATE, 2))
        return start / RATE

    def append_contiguous(self, samples: np.ndarray, before: np.ndarray, *,
                          meta: dict[str, Any] | None = None) -> None:
        """Queue 48 kHz stereo ``samples`` that continue, sample for sample, audio queued
        last, whose final frames are ``before``: joined with no crossfade, so the stream
        plays them as one signal (streamed generation's pieces). Should the queue have run
        dry meanwhile, the buffer fades them in as any audio after a gap.

        The buffer crossfades every append over its queue's tail; the head given to it
        here is the tail pre-divided so that the equal-power crossfade gives back the tail
        itself (``tail * fade_out + head * fade_in == tail``)."""
        x = np.ascontiguousarray(samples, dtype=np.float32)
        n = min(self.buffer.crossfade_frames, before.shape[1])
        if x.shape[1] == 0:
            return
        t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
        gain = ((1.0 - np.cos(t * np.pi / 2)) / np.sin(t * np.pi / 2)).astype(np.float32)
        head = before[:, before.shape[1] - n:] * gain
        self.buffer.append(np.concatenate([head, x], axis=1), overlap_frames=n, meta=meta)
        self.last_audio = time.time()

    def _on_segment(self, sequence: int, duration: float) -> None:
        self.segments += 1
        self.last_segment = time.time()

    def snapshot(self) -> dict[str, Any]:
        """What the packager publishes about this stream (all JSON-friendly)."""
        playing = self.buffer.playing_meta() or {}
        return {
            "state": "playing" if self.buffer.playing else "waiting",
            "buffered_s": round(self.buffer.buffered_seconds, 2),
            "position_s": round(self.buffer.position / RATE, 2),
            "underruns": self.buffer.underruns,
            "segments": self.segments,
            "media_sequence": self.playlist.entries[0].sequence if self.playlist.entries else 0,
            "last_segment_at": round(self.last_segment, 3),
            "last_audio": round(self.last_audio, 3),
            "encoder_restarts": self.encoder.restarts,
            "joins": json.dumps(self.joins),
            "playing_prompt": playing.get("prompt") or "",
            "playing_prompt_index": playing.get("prompt_index", ""),
        }
