"""Generation engine: MusicGen (AudioCraft) behind a small, typed interface.

Importing this package does not import torch or AudioCraft (several seconds): that happens
on the first model load, on calling ``build_debug_musicgen``/``save_debug_checkpoint``, or
on first access to ``MusicGenEngine``/``disable_mkldnn`` (resolved lazily).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from g4l.engine.base import Cancelled, Engine, GenerationParams, ProgressCallback
from g4l.engine.cache import ModelCache, ModelLoadError, normalize_model_id
from g4l.engine.debug_model import DEBUG_MODEL_ID, build_debug_musicgen, save_debug_checkpoint

if TYPE_CHECKING:
    from g4l.engine.musicgen import MusicGenEngine, disable_mkldnn

__all__ = [
    "Cancelled",
    "DEBUG_MODEL_ID",
    "Engine",
    "GenerationParams",
    "ModelCache",
    "ModelLoadError",
    "MusicGenEngine",
    "ProgressCallback",
    "build_debug_musicgen",
    "disable_mkldnn",
    "normalize_model_id",
    "save_debug_checkpoint",
]

_LAZY = {
    "MusicGenEngine": "g4l.engine.musicgen",
    "disable_mkldnn": "g4l.engine.musicgen",
}


def __getattr__(name: str) -> Any:
    # PEP 562: heavy names are imported on first use only.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'g4l.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
