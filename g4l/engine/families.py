"""Model families: what each kind of model can do, how it loads and which jobs it serves.

A family is the unit a worker loads and a job is routed by: MusicGen (gary: continues
audio), Stable Audio Open Small (jerry: audio from text) and MelodyFlow (terry: rewrites
audio toward a text). Each family names the module that loads its models
(``load_engine(model_id, source, device)``) and writes its tiny debug model in the released
file layout (``write_debug_checkpoint(directory)``), so ``G4L_MODELS=debug`` serves every
family through the production loaders with no download.

No torch here: the web side reads families to route, validate and report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Capability(StrEnum):
    """What a family's models can do."""

    CONTINUE = "continue"
    TEXT_TO_AUDIO = "text_to_audio"
    TRANSFORM = "transform"


@dataclass(frozen=True)
class ModelFamily:
    """One family of models (see the module docstring).

    :param name: the family's id (``musicgen``, ``stable_audio``, ``melodyflow``).
    :param nickname: what the clients call it (gary, jerry, terry).
    :param loader: the module with ``load_engine`` and ``write_debug_checkpoint``.
    :param default_model: the hub id served when the operator allows the family by name only.
    :param debug_model: the id of its tiny built-in model (``G4L_MODELS=debug``).
    :param window_s: the most seconds one model pass makes or edits.
    :param memory_gb: about what its default model holds in GPU memory (weights, activations
        of one job), what a worker's memory budget is counted in.
    :param markers: lower-case fragments of hub ids that belong to the family.
    :param config_file: a file whose presence marks a checkpoint directory as the family's.
    """

    name: str
    nickname: str
    capabilities: frozenset[Capability]
    loader: str
    default_model: str
    debug_model: str
    sample_rate: int
    channels: int
    window_s: float
    memory_gb: float
    markers: tuple[str, ...] = ()
    config_file: str | None = None

    def can(self, capability: Capability) -> bool:
        """Whether the family's models can do ``capability``."""
        return capability in self.capabilities


MUSICGEN = ModelFamily(
    name="musicgen", nickname="gary", capabilities=frozenset({Capability.CONTINUE, Capability.TEXT_TO_AUDIO}),
    loader="g4l.engine.musicgen", default_model="facebook/musicgen-small", debug_model="debug",
    sample_rate=32_000, channels=1, window_s=30.0, memory_gb=4.0, markers=("musicgen",))
STABLE_AUDIO = ModelFamily(
    name="stable_audio", nickname="jerry", capabilities=frozenset({Capability.TEXT_TO_AUDIO}),
    loader="g4l.engine.stable_audio", default_model="stabilityai/stable-audio-open-small",
    debug_model="debug-stable-audio", sample_rate=44_100, channels=2, window_s=11.0, memory_gb=2.0,
    markers=("stable-audio", "stable_audio"), config_file="model_config.json")
MELODYFLOW = ModelFamily(
    name="melodyflow", nickname="terry", capabilities=frozenset({Capability.TRANSFORM}),
    loader="g4l.engine.melodyflow", default_model="facebook/melodyflow-t24-30secs",
    debug_model="debug-melodyflow", sample_rate=48_000, channels=2, window_s=30.0, memory_gb=9.0,
    markers=("melodyflow",))

#: Every family, by name; MusicGen first (the family of ids that name no other).
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (MUSICGEN, STABLE_AUDIO, MELODYFLOW)}

#: What ``G4L_MODELS`` may say to allow the tiny model of every family.
DEBUG = "debug"


def expand_allowlist(models: Iterable[str]) -> list[str]:
    """The operator's allowlist with ``debug`` standing for every family's debug model
    (MusicGen's ``debug`` keeps its place: existing clients ask for it by that name)."""
    out: list[str] = []
    for model in models:
        model = model.strip()
        if not model:
            continue
        out.extend(f.debug_model for f in FAMILIES.values()) if model == DEBUG else out.append(model)
    return list(dict.fromkeys(out))


def family_of(model_id: str, paths: Mapping[str, str] | None = None) -> ModelFamily:
    """The family a model id belongs to: a debug id's own, a checkpoint directory holding a
    family's config file, an id (or its mapped directory) naming a family's marker; any
    other id is a MusicGen checkpoint (fine-tunes on the hub carry arbitrary names)."""
    key = model_id.strip()
    for family in FAMILIES.values():
        if key == family.debug_model:
            return family
    directory = (paths or {}).get(key) or key
    directory = os.path.expanduser(directory)
    if os.path.isdir(directory):
        for family in FAMILIES.values():
            if family.config_file and os.path.isfile(os.path.join(directory, family.config_file)):
                return family
    lowered = f"{key} {directory}".lower()
    for family in FAMILIES.values():
        if family is not MUSICGEN and any(marker in lowered for marker in family.markers):
            return family
    return MUSICGEN


def models_of(family: ModelFamily, allowlist: Iterable[str], paths: Mapping[str, str] | None = None) -> list[str]:
    """The allowed ids of ``family``, in allowlist order."""
    return [m for m in expand_allowlist(allowlist) if family_of(m, paths) is family]


def default_model(family: ModelFamily, allowlist: Iterable[str], configured: str | None = None,
                  paths: Mapping[str, str] | None = None) -> str | None:
    """The model a request for ``family`` that names none gets: ``configured`` when it is
    one of the family's allowed ids, else the family's first allowed id; ``None`` when the
    operator allows none of the family's models."""
    allowed = models_of(family, allowlist, paths)
    if configured and configured.strip() in allowed:
        return configured.strip()
    return allowed[0] if allowed else None
