"""Turning a client's ``audio_data`` into validated audio, before anything is stored."""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pybase64

from g4l import audio
from g4l.errors import InvalidAudio, TooLarge
from g4l.settings import Settings

Offload = Callable[..., Any]


@dataclass(frozen=True)
class Upload:
    """A client's WAV, decoded and checked."""

    wav: bytes
    audio: audio.Audio


def b64decode(text: str, max_bytes: int) -> bytes:
    """Strict base64 (a data: URI prefix and whitespace are tolerated)."""
    if not isinstance(text, str):
        raise InvalidAudio("audio_data must be a base64 string")
    if len(text) > max_bytes:
        raise TooLarge(f"audio_data is {len(text) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:  # SIMD decoder: ten times binascii's speed on tens of MB
        data = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = _b64decode_slow(text)
    if not data:
        raise InvalidAudio("audio_data is empty")
    return data


def _b64decode_slow(text: str) -> bytes:
    """The strict decode again with the standard library: tolerates line-wrapped base64
    and names what is wrong."""
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        try:  # line-wrapped base64 from some encoders
            return binascii.a2b_base64("".join(text.split()).encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise InvalidAudio(f"audio_data is not valid base64 ({exc})") from None


def decode_upload(text: str, settings: Settings, offload: Offload) -> Upload:
    """base64 -> WAV bytes -> checked audio. CPU work runs through ``offload`` (a thread)."""
    wav = offload(b64decode, text, settings.max_payload_bytes)
    decoded = offload(_decode_wav, wav, settings)
    return Upload(wav, decoded)


def decode_stored(wav: bytes, settings: Settings, offload: Offload) -> Upload:
    """A WAV the server holds (a job's result) as an upload: checked like the client's."""
    return Upload(wav, offload(_decode_wav, wav, settings))


def _decode_wav(wav: bytes, settings: Settings) -> audio.Audio:
    return audio.decode_wav(wav, max_seconds=settings.max_input_seconds, max_channels=settings.max_channels,
                            max_rate=settings.max_sample_rate)
