"""MelodyFlow (terry): our own inference on AudioCraft 1.3.0's building blocks.

MelodyFlow is in no PyPI package; this package builds its VAE and DiT from the released
checkpoint's config and loads its weights strictly (see :mod:`.checkpoint`). Importing it
imports neither torch nor AudioCraft: the entry points do, when called.

Entry points (the interface contract):
    load_engine(model_id, source, device) -> MelodyFlowEngine
    write_debug_checkpoint(directory, seed=0) -> Path
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from g4l.engine.melodyflow.params import TransformParams

if TYPE_CHECKING:
    from g4l.engine.melodyflow.engine import MelodyFlowEngine

DEFAULT_MODEL_ID = "facebook/melodyflow-t24-30secs"
DEBUG_MODEL_ID = "debug-melodyflow"

__all__ = ["DEBUG_MODEL_ID", "DEFAULT_MODEL_ID", "MelodyFlowEngine", "TransformParams", "load_engine",
           "write_debug_checkpoint"]


def load_engine(model_id: str, source: str, device: str) -> MelodyFlowEngine:
    """Load a MelodyFlow engine.

    Args:
        model_id: the id the engine reports (``debug-melodyflow``, a hub id, a path).
        source: a checkpoint directory (``state_dict.bin`` + ``compression_state_dict.bin``)
            or a Hugging Face repo id (files read from the hub cache, downloaded if allowed).
        device: ``'cpu'`` or ``'cuda'``.

    Raises:
        FileNotFoundError: a directory without the two files.
        ValueError: a file that is not an AudioCraft export.
        huggingface_hub errors (e.g. ``LocalEntryNotFoundError`` offline): not in the cache.
    """
    from g4l.engine.melodyflow.checkpoint import load_models
    from g4l.engine.melodyflow.engine import MelodyFlowEngine

    vae, dit, _ = load_models(source, device)
    return MelodyFlowEngine(model_id, vae, dit, device)


def write_debug_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny random-weight debug MelodyFlow in the released layout; returns ``directory``."""
    from g4l.engine.melodyflow.checkpoint import write_debug_checkpoint as write

    return write(directory, seed=seed)


def __getattr__(name: str) -> object:
    if name == "MelodyFlowEngine":  # PEP 562: torch only on first use
        from g4l.engine.melodyflow.engine import MelodyFlowEngine

        return MelodyFlowEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
