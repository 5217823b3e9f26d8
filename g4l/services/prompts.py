"""The prompt builder: musical attributes in, one MusicGen text description out.

MusicGen was trained on short, comma-separated descriptions ("dark drum and bass, 174
bpm, reese bass, amen break"); the builder writes that shape in a fixed order, so the
same attributes always give the same prompt (reproducible with a seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _clean(text: str | None) -> str | None:
    """Collapse whitespace; ``None`` for blank."""
    if text is None:
        return None
    cleaned = " ".join(text.split())
    return cleaned or None


@dataclass(frozen=True)
class BuiltPrompt:
    """``structured_prompt`` is what to send as ``prompt``/``description``;
    ``components`` are the normalized attributes it was built from."""

    structured_prompt: str
    components: dict[str, object] = field(default_factory=dict)


def build_prompt(*, genre: str | None = None, tempo: int | None = None, mood: str | None = None,
                 instruments: list[str] | None = None, artist_style: str | None = None) -> BuiltPrompt:
    """Build a description: ``"<mood> <genre>, <tempo> bpm, <instruments>, in the style of <artist>"``.

    Every part is optional; blank parts are dropped, instruments are de-duplicated
    (case-insensitively, first spelling kept). With nothing given, the prompt is empty
    (unguided generation).
    """
    genre_c, mood_c, artist_c = _clean(genre), _clean(mood), _clean(artist_style)
    seen: set[str] = set()
    instruments_c: list[str] = []
    for item in instruments or []:
        name = _clean(item)
        if name and name.lower() not in seen:
            seen.add(name.lower())
            instruments_c.append(name)
    parts: list[str] = []
    head = " ".join(p for p in (mood_c, genre_c) if p)
    if head:
        parts.append(head)
    if tempo is not None:
        parts.append(f"{tempo} bpm")
    if instruments_c:
        parts.append(", ".join(instruments_c))
    if artist_c:
        parts.append(f"in the style of {artist_c}")
    components: dict[str, object] = {"genre": genre_c, "tempo": tempo, "mood": mood_c,
                                     "instruments": instruments_c, "artist_style": artist_c}
    return BuiltPrompt(", ".join(parts), components)
