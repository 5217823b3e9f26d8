"""The model catalogue clients pick from: the operator's allowlist, grouped by size."""

from __future__ import annotations

import json

from g4l.context import Context
from g4l.errors import ModelUnavailable
from g4l.jobs import recovery

SIZES = ("small", "medium", "large")


class ModelCatalog:
    """Which models may be asked for, and how big each is.

    A model's size is, first, what the operator says (``G4L_MODEL_SIZES``), then what a
    worker that loaded it read off its weights, then a size word in its id
    (``facebook/musicgen-medium``), else ``small`` (most fine-tunes are).
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def sizes(self) -> dict[str, str]:
        """Model id -> size, for every allowed model, in allowlist order."""
        reported: dict[str, str] = {}
        try:
            for beat in recovery.alive_workers(self.ctx).values():
                reported.update(json.loads(beat).get("model_sizes") or {})
        except Exception:  # Redis down: the catalogue still answers from what it knows
            pass
        declared = self.ctx.settings.model_size_map
        out: dict[str, str] = {}
        for model in self.ctx.settings.models:
            size = declared.get(model) or reported.get(model) or _size_word(model) or "small"
            out[model] = size if size in SIZES else "small"
        return out

    def require_available(self, model: str) -> None:
        """Refuse at once a model every live worker failed to load (instead of queueing a
        job that cannot run). With no worker alive the job queues: one may be starting.

        :raises ModelUnavailable: with the workers' reason.
        """
        try:
            beats = [json.loads(b) for b in recovery.alive_workers(self.ctx).values()]
        except Exception:  # Redis trouble is reported by the enqueue that follows
            return
        if not beats:
            return
        reasons = [(b.get("models_failed") or {}).get(model) for b in beats]
        if all(reasons) and not any(model in (b.get("models") or []) for b in beats):
            raise ModelUnavailable(str(reasons[0]))

    def grouped(self) -> dict[str, list[str]]:
        """Size -> model ids (every size present, maybe empty)."""
        groups: dict[str, list[str]] = {size: [] for size in SIZES}
        for model, size in self.sizes().items():
            groups[size].append(model)
        return groups


def _size_word(model: str) -> str | None:
    name = model.lower()
    return next((size for size in SIZES if size in name), None)
