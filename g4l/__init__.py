"""g4l: a real-time collaboration server for DAW plugins (MusicGen continuation)."""

__version__ = "0.1.0"
