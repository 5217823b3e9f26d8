"""One sampling contract (plugin_protocol/sampling.py): every model that takes sampling
parameters (the device payloads, which the Socket.IO and JUCE routes parse; the /api/v1
session, generate and station bodies) and the generation spec they end in accept and
refuse exactly the same values, so a request that passed one check never fails the next."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from g4l.errors import InvalidRequest
from g4l.jobs.spec import Sampling
from g4l.services.specs import SpecResolver
from g4l.web.api import models as api
from g4l.web.api.stream_models import StationRequest
from plugin_protocol import payloads, sampling

#: Values at, just inside and just outside every bound, and the extremes clients send.
CASES: dict[str, list[float]] = {
    "top_k": [-1, 0, 1, 250, sampling.TOP_K_MAX, sampling.TOP_K_MAX + 1],
    "top_p": [-0.01, 0.0, 0.9, 1.0, 1.01],
    "temperature": [-1.0, 0.0, 0.01, 0.05, 1.0, 5.0, 5.5, sampling.TEMPERATURE_MAX, 10.01, 99.0],
    "cfg_coef": [-0.5, 0.0, 3.0, 20.0, 20.5, sampling.CFG_COEF_MAX, 30.5],
}
#: A valid body of each model, without sampling parameters.
BASES: dict[type[BaseModel], dict[str, object]] = {
    payloads.ProcessAudioRequest: {"audio_data": "UklGRg==", "model_name": "debug", "prompt_duration": 6},
    payloads.ContinueMusicRequest: {"session_id": "s1"},
    payloads.RetryMusicRequest: {"session_id": "s1"},
    api.BangRequest: {"audio_data": "UklGRg=="},
    api.ContinueRequest: {},
    api.GenerateRequest: {"prompt": "dub", "duration": 8},
    StationRequest: {"prompt": "dub"},
}


def _accepts(model: type[BaseModel], field: str, value: float) -> bool:
    try:
        model.model_validate({**BASES[model], field: value})
    except ValidationError:
        return False
    return True


def _spec_accepts(field: str, value: float) -> bool:
    try:
        SpecResolver.sampling({field: value})
    except InvalidRequest:
        return False
    return True


@pytest.mark.parametrize("field", sorted(CASES))
def test_every_check_gives_the_same_answer(field: str) -> None:
    for value in CASES[field]:
        models = [m for m in BASES if field in m.model_fields]
        answers = {m.__name__: _accepts(m, field, value) for m in models}
        answers["Sampling (spec)"] = _spec_accepts(field, value)
        assert len(set(answers.values())) == 1, f"{field}={value}: {answers}"


def test_the_bounds_are_the_widest_clients_rely_on() -> None:
    """temperature up to 10 and cfg up to 30 stay accepted (the device protocol and
    /api/v1 took them); the stations' narrower range is inside."""
    for model in BASES:
        if "temperature" in model.model_fields:
            assert _accepts(model, "temperature", 10.0) and not _accepts(model, "temperature", 0.0)
        if "cfg_coef" in model.model_fields:
            assert _accepts(model, "cfg_coef", 30.0)
    assert Sampling(temperature=10.0, cfg_coef=30.0, top_k=10_000, top_p=1.0).temperature == 10.0
    with pytest.raises(ValidationError):
        Sampling(temperature=math.nextafter(10.0, 11.0))


def test_the_defaults_are_the_engines() -> None:
    from g4l.engine.base import GenerationParams

    engine, spec = GenerationParams(), Sampling()
    assert (spec.top_k, spec.top_p, spec.temperature, spec.cfg_coef) == (
        engine.top_k, engine.top_p, engine.temperature, engine.cfg_coef)
