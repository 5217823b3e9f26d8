"""The micro-batcher that gathers text-to-audio requests into one sampler run
(g4l/engine/microbatch.py), with a plain function standing for the batched model call."""

from __future__ import annotations

import threading
import time

import pytest

from g4l.engine.base import Cancelled
from g4l.engine.microbatch import MicroBatcher


class Model:
    """A batched call that squares each request over ``steps`` steps, waiting on a gate
    before its first step so the test decides when requests have gathered."""

    def __init__(self, steps: int = 4) -> None:
        self.steps = steps
        self.gate = threading.Event()
        self.calls: list[list[int]] = []
        self.steps_run = 0

    def __call__(self, params: list[int], progress) -> list[int]:  # type: ignore[no-untyped-def]
        self.calls.append(list(params))
        self.gate.wait(10)
        for step in range(1, self.steps + 1):
            self.steps_run += 1
            progress(step, self.steps)
        return [p * p for p in params]


def _submit_all(batcher: MicroBatcher, values: list[int], on_progress=None) -> tuple[dict, list[threading.Thread]]:  # type: ignore[no-untyped-def]
    out: dict = {}

    def one(v: int) -> None:
        try:
            out[v] = batcher.submit(v, on_progress(v) if on_progress else None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects what each caller got
            out[v] = exc

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for t in threads:
        t.start()
    return out, threads


def _wait_pending(batcher: MicroBatcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(batcher._pending) < n and time.monotonic() < deadline:  # noqa: SLF001 - gathering is the behaviour
        time.sleep(0.01)
    assert len(batcher._pending) == n  # noqa: SLF001


def test_requests_that_arrive_during_a_batch_run_together_in_the_next() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_batch=3)
    first, t1 = _submit_all(batcher, [1])
    while not model.calls:
        time.sleep(0.01)
    rest, t2 = _submit_all(batcher, [2, 3, 4, 5])
    _wait_pending(batcher, 4)
    model.gate.set()
    for t in t1 + t2:
        t.join(10)
    assert first == {1: 1} and rest == {2: 4, 3: 9, 4: 16, 5: 25}
    assert batcher.batch_sizes == [1, 3, 1]  # the four waiting ones, at most three at a time
    batcher.stop()


def test_a_cancelled_request_gets_cancelled_and_the_others_their_results() -> None:
    model = Model()
    batcher = MicroBatcher(model, max_batch=4)

    def progress(v: int):  # type: ignore[no-untyped-def]
        def on_progress(step: int, total: int) -> None:
            if v == 2 and step == 2:
                raise Cancelled()
        return on_progress

    out, threads = _submit_all(batcher, [1, 2, 3], progress)
    model.gate.set()
    for t in threads:
        t.join(10)
    assert out[1] == 1 and out[3] == 9 and isinstance(out[2], Cancelled)
    batcher.stop()


def test_a_batch_whose_requests_are_all_cancelled_stops_early() -> None:
    model = Model(steps=50)
    model.gate.set()
    batcher = MicroBatcher(model, max_batch=4)

    def progress(v: int):  # type: ignore[no-untyped-def]
        def on_progress(step: int, total: int) -> None:
            if step >= 3:
                raise Cancelled()
        return on_progress

    out, threads = _submit_all(batcher, [1], progress)
    for t in threads:
        t.join(10)
    assert isinstance(out[1], Cancelled) and model.steps_run == 3
    batcher.stop()


def test_a_failing_batch_fails_every_request_and_the_batcher_goes_on() -> None:
    def broken(params: list[int], progress) -> list[int]:  # type: ignore[no-untyped-def]
        if 0 in params:
            raise RuntimeError("model fault")
        return params

    batcher = MicroBatcher(broken, max_batch=2)
    with pytest.raises(RuntimeError, match="model fault"):
        batcher.submit(0)
    assert batcher.submit(7) == 7
    batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(1)


def test_only_requests_that_can_share_a_call_are_batched_together() -> None:
    """Requests with another key (another sampler or step count) wait for their own batch."""
    model = Model()
    batcher = MicroBatcher(model, max_batch=8, key=lambda v: v % 2)
    first, t1 = _submit_all(batcher, [1])
    while not model.calls:
        time.sleep(0.01)
    rest, t2 = _submit_all(batcher, [2, 3, 4, 5])
    _wait_pending(batcher, 4)
    model.gate.set()
    for t in t1 + t2:
        t.join(10)
    assert rest == {2: 4, 3: 9, 4: 16, 5: 25}
    assert sorted(map(sorted, model.calls[1:])) == [[2, 4], [3, 5]]
    batcher.stop()
