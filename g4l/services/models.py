"""The model catalogue clients pick from: the operator's allowlist, grouped by size, and
each model family's state as the live workers report it."""

from __future__ import annotations

import json
from typing import Any

from g4l.context import Context
from g4l.engine.families import FAMILIES, MUSICGEN, ModelFamily, default_model, models_of
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
        """Model id -> size, for every allowed MusicGen, in allowlist order."""
        reported: dict[str, str] = {}
        try:
            for beat in recovery.alive_workers(self.ctx).values():
                reported.update(json.loads(beat).get("model_sizes") or {})
        except Exception:  # Redis down: the catalogue still answers from what it knows
            pass
        declared = self.ctx.settings.model_size_map
        out: dict[str, str] = {}
        settings = self.ctx.settings
        for model in models_of(MUSICGEN, settings.models, settings.model_path_map):
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

    def families(self) -> dict[str, dict[str, Any]]:
        """Each model family's state (:func:`family_states`)."""
        return family_states(self.ctx)

    def grouped(self) -> dict[str, list[str]]:
        """Size -> model ids (every size present, maybe empty)."""
        groups: dict[str, list[str]] = {size: [] for size in SIZES}
        for model, size in self.sizes().items():
            groups[size].append(model)
        return groups


def family_states(ctx: Context, beats: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Each family's state, for ``/health``, ``/api/models`` and the jerry/terry status
    routes: ``loaded`` (some live worker has its default model), ``loading``, ``failed``
    (every worker that tried failed: ``reason`` says why), ``unavailable`` (allowed, but no
    live worker loads it), ``not_allowed`` (no model of the family is in the allowlist).

    :param beats: the live workers' heartbeats (read from Redis when not given).
    """
    if beats is None:
        try:
            beats = [json.loads(b) for b in recovery.alive_workers(ctx).values()]
        except Exception:  # Redis down: every family is unavailable, and /health says why
            beats = []
    settings = ctx.settings
    out: dict[str, dict[str, Any]] = {}
    for family in FAMILIES.values():
        out[family.name] = _family_state(family, settings.models, settings.model_path_map,
                                         settings.default_model if family.name == "musicgen" else None, beats)
    return out


def _family_state(family: ModelFamily, allowlist: list[str], paths: dict[str, str], configured: str | None,
                  beats: list[dict[str, Any]]) -> dict[str, Any]:
    models = models_of(family, allowlist, paths)
    reports = [b["families"][family.name] for b in beats if family.name in (b.get("families") or {})]
    states = [r.get("state") for r in reports]
    if not models:
        state = "not_allowed"
    elif "loaded" in states:
        state = "loaded"
    elif "loading" in states or "not_loaded" in states:
        state = "loading"
    elif states:
        state = "failed"
    else:
        state = "unavailable"
    body: dict[str, Any] = {"nickname": family.nickname, "state": state,
                            "capabilities": sorted(c.value for c in family.capabilities),
                            "default_model": default_model(family, allowlist, configured, paths),
                            "models": models, "sample_rate": family.sample_rate, "window_s": family.window_s,
                            "workers": sum(1 for s in states if s == "loaded")}
    if state == "failed":
        body["reason"] = next((r.get("reason") for r in reports if r.get("reason")), "the model failed to load")
    return body


def _size_word(model: str) -> str | None:
    name = model.lower()
    return next((size for size in SIZES if size in name), None)
