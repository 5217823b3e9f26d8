"""Local audio files: reading inputs, writing results atomically, naming and describing them."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from g4l.cli.errors import usage


def read_input(path: str | Path) -> bytes:
    """The bytes of an input file; a missing or unreadable one is a usage error. The
    content is not checked here: the server judges it (``INVALID_AUDIO``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise usage(f"no such file: {p}") from None
    except OSError as exc:
        raise usage(f"cannot read {p}: {exc.strerror or exc}") from None
    if not data:
        raise usage(f"{p} is empty")
    return data


def write_output(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file).

    :returns: the absolute path written.
    """
    path = path.expanduser().absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise usage(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def output_path(requested: str | None, name: str, kind: str) -> Path:
    """Where a result goes: ``requested``, else the first free ``g4l-<name>-<kind>[-N].wav``
    in the current directory (results are never overwritten unless asked)."""
    if requested:
        return Path(requested).expanduser().absolute()
    stem = f"g4l-{name[:8]}-{kind}"
    candidate, n = Path(f"{stem}.wav"), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{stem}-{n}.wav")
    return candidate.absolute()


def describe(data: bytes) -> dict[str, Any]:
    """``{seconds, sample_rate, channels, bytes}`` of a WAV (None values if unreadable)."""
    import soundfile as sf  # numpy with it takes 0.15 s to import: only where used

    try:
        info = sf.info(io.BytesIO(data))
        seconds: float | None = round(info.frames / info.samplerate, 3)
        rate: int | None = int(info.samplerate)
        channels: int | None = int(info.channels)
    except (RuntimeError, ValueError):  # soundfile's error for unreadable data
        seconds = rate = channels = None
    return {"seconds": seconds, "sample_rate": rate, "channels": channels, "bytes": len(data)}


def summary(path: Path, info: dict[str, Any]) -> str:
    """``out.wav: 30.0 s, 48000 Hz stereo, 5.8 MB`` for a person."""
    parts = []
    if info.get("seconds") is not None:
        parts.append(f"{info['seconds']:.1f} s")
    if info.get("sample_rate"):
        chans = {1: "mono", 2: "stereo"}.get(info.get("channels") or 0, f"{info.get('channels')} ch")
        parts.append(f"{info['sample_rate']} Hz {chans}")
    parts.append(f"{info['bytes'] / 1e6:.1f} MB")
    return f"{_shown(path)}: {', '.join(parts)}"


def _shown(path: Path) -> str:
    # Relative to the working directory when inside it: what the person typed.
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
