"""jerry's request rules, without a server: what the spec resolver accepts and refuses
(issue 19's bad inputs), how a loop is planned at the prompt's tempo, and the launcher's
localhost ports."""

from __future__ import annotations

import socket

import pytest

from g4l import launcher
from g4l.errors import InvalidRequest, ModelNotAllowed, ModelUnavailable
from g4l.services.specs import SpecResolver
from g4l.services.text_to_audio import LOOP_NEGATIVE, plan_loop
from g4l.settings import Settings


@pytest.fixture
def specs() -> SpecResolver:
    return SpecResolver(Settings(models=["debug"]))


def test_a_plain_request_gets_the_contracts_defaults(specs: SpecResolver) -> None:
    spec = specs.text_to_audio(prompt="  warm rhodes chords 90bpm ")
    assert spec.model == "debug-stable-audio" and spec.family == "stable_audio"
    assert spec.description == "warm rhodes chords 90bpm"
    assert spec.output_seconds == 11.0
    assert spec.text is not None
    assert (spec.text.steps, spec.text.cfg_scale, spec.text.sampler_type) == (8, 1.0, "pingpong")
    assert spec.output.sample_rate == 44_100 and spec.output.channels == 2 and spec.output.subtype == "PCM_16"
    assert spec.seed is not None and 0 <= spec.seed < 100_000  # -1 / absent: the server picks


def test_seed_and_lengths(specs: SpecResolver) -> None:
    assert specs.text_to_audio(prompt="x", seed=42).seed == 42
    assert specs.text_to_audio(prompt="x", seed=-1).seed is not None
    assert specs.text_to_audio(prompt="x", seconds_total=5).output_seconds == 5.0
    assert specs.text_to_audio(prompt="x", seconds_total=100).output_seconds == 11.0  # clamped, as upstream
    assert specs.text_to_audio(prompt="x", seconds_total=1).output_seconds == 1.0
    assert specs.text_to_audio(prompt="x", cfg_scale=0).text.cfg_scale == 0.0  # type: ignore[union-attr]
    assert specs.text_to_audio(prompt="x", cfg_scale=20, steps=250).text.steps == 250  # type: ignore[union-attr]


@pytest.mark.parametrize("fields, fragment", [
    ({"prompt": None}, "prompt is required"),
    ({"prompt": "   "}, "prompt is required"),
    ({"prompt": 5}, "prompt is required"),
    ({"prompt": "x" * 2001}, "too long"),
    ({"steps": 8.0}, "steps must be an integer"),
    ({"steps": 8.5}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"),
    ({"steps": "8"}, "steps must be an integer"),
    ({"steps": 0}, "between 1 and 250"),
    ({"steps": 251}, "between 1 and 250"),
    ({"cfg_scale": -0.5}, "cfg_scale must be a number between 0 and 20"),
    ({"cfg_scale": 20.5}, "cfg_scale"),
    ({"cfg_scale": "7"}, "cfg_scale"),
    ({"cfg_scale": float("nan")}, "cfg_scale"),
    ({"seconds_total": 0}, "seconds_total must be >= 1"),
    ({"seconds_total": -3}, "seconds_total must be >= 1"),
    ({"seconds_total": 2.5}, "integer number of seconds"),
    ({"seconds_total": "11"}, "integer number of seconds"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"seed": -2}, "seed must be an integer"),
    ({"sampler_type": "ddim"}, "sampler_type must be one of"),
    ({"negative_prompt": ["drums"]}, "negative_prompt must be a string"),
    ({"model_type": "huge"}, "model_type must be"),
    ({"model_type": "finetune"}, "finetune_repo is required"),
    ({"model_type": "finetune", "finetune_repo": "thepatch/jerry_grunge"}, "not served here"),
])
def test_bad_input_is_refused_with_the_reason(specs: SpecResolver, fields: dict, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        specs.text_to_audio(**{"prompt": "a prompt", **fields})
    assert fragment in err.value.message


def test_models_jerry_may_use() -> None:
    none = SpecResolver(Settings(models=["facebook/musicgen-small"]))
    with pytest.raises(ModelUnavailable, match="jerry"):
        none.text_to_audio(prompt="x")
    tuned = SpecResolver(Settings(models=["debug", "someone/stable-audio-finetune"]))
    spec = tuned.text_to_audio(prompt="x", model_type="finetune", finetune_repo="someone/stable-audio-finetune")
    assert spec.model == "someone/stable-audio-finetune"
    with pytest.raises(ModelNotAllowed):
        tuned.text_to_audio(prompt="x", model="debug")  # MusicGen cannot make audio from text here


@pytest.mark.parametrize("bpm, bars", [(120, 4), (90, 4), (180, 8), (60, 2), (30, 1)])
def test_auto_bars_are_the_most_that_fit_in_11_s(bpm: int, bars: int) -> None:
    plan = plan_loop(f"tight funk drums {bpm}bpm")
    assert plan.bpm == bpm and plan.bars == bars
    assert plan.seconds == pytest.approx(bars * 4 * 60 / bpm) and plan.seconds <= 11.0
    assert plan.negative_prompt is None and plan.loop_type == "auto"


def test_loop_types_and_explicit_bars() -> None:
    drums = plan_loop("dusty breakbeat 100 BPM", bars=2, loop_type="drums")
    assert drums.bars == 2 and drums.seconds == pytest.approx(4.8) and drums.prompt.endswith("drum loop")
    assert drums.negative_prompt == LOOP_NEGATIVE["drums"]
    keys = plan_loop("jazz piano 120bpm", loop_type="instruments", negative_prompt="vocals")
    assert keys.negative_prompt == f"vocals, {LOOP_NEGATIVE['instruments']}"


@pytest.mark.parametrize("prompt, bars, loop_type, fragment", [
    ("chill pads", None, None, "NNNbpm"),
    ("chill pads 120", None, None, "NNNbpm"),
    (None, None, None, "prompt is required"),
    ("chill 120bpm", 3, None, "bars must be 1, 2, 4 or 8"),
    ("chill 120bpm", 4.0, None, "bars must be 1, 2, 4 or 8"),
    ("chill 120bpm", "four", None, "bars must be 1, 2, 4 or 8"),
    ("chill 120bpm", 8, None, "ask for 4 bars or fewer"),
    ("chill 120bpm", None, "vocals", "loop_type must be one of"),
    ("slow 20bpm", None, None, "longer than the 11 s"),
    ("chill 0bpm", None, None, "tempo must be"),
])
def test_bad_loops_are_refused(prompt, bars, loop_type, fragment) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_loop(prompt, bars, loop_type)
    assert fragment in err.value.message


def test_a_taken_localhost_port_is_skipped_with_a_line(capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as free_sock:
            free_sock.bind(("127.0.0.1", 0))
            free = free_sock.getsockname()[1]
        ports = launcher.localhost_ports("127.0.0.1", 8000, {"jerry": port, "terry": free})
    assert ports == [free]
    assert f"port {port} is taken: jerry's localhost port is not served" in capsys.readouterr().out
    assert launcher.localhost_ports("127.0.0.1", 8000, {"jerry": 0, "terry": 8000}) == []  # off, and the main port


def test_the_balancer_listens_on_the_localhost_ports_too() -> None:
    from g4l.balancer import Backend, render_config

    conf = render_config([Backend("w0", "127.0.0.1", 9001)], ["0.0.0.0:8000", "0.0.0.0:8005", "0.0.0.0:8002"],
                         max_body_mb=10)
    assert [line.strip() for line in conf.splitlines() if line.strip().startswith("listen ")] == [
        "listen 0.0.0.0:8000;", "listen 0.0.0.0:8005;", "listen 0.0.0.0:8002;"]


def test_a_request_waits_for_its_job_to_end(ctx) -> None:
    """JobWaits (the upstream routes wait for the audio): a pending job comes back as it is
    when the time is up; an ended one at once; an unknown one as None."""
    import gevent

    from g4l.jobs import lifecycle
    from g4l.jobs.records import Job, JobStatus, new_job_id
    from g4l.services.job_waits import JobWaits

    waits = JobWaits(ctx)
    spec = SpecResolver(ctx.settings).text_to_audio(prompt="a drone", seed=1)
    job = Job(id=new_job_id(), kind="text_to_audio", session_id="", spec=spec)
    ctx.queue.enqueue(job)
    pending = waits.wait(job.id, 0.2)
    assert pending is not None and pending.status is JobStatus.QUEUED
    gevent.spawn_later(0.1, lambda: (lifecycle.request_cancel(ctx, job.id),
                                     waits.on_notice({"type": "canceled", "job_id": job.id})))
    ended = waits.wait(job.id, 30)
    assert ended is not None and ended.status is JobStatus.CANCELED
    assert waits.wait(new_job_id(), 0.1) is None
    assert not waits._events  # nobody left waiting
