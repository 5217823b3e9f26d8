"""The live progress display: one line on stderr, queue position while queued, then the
model's percent. Fed by the device protocol's events or the HTTP API's ``job_update``."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any

from tqdm import tqdm

from plugin_protocol import events

_RESULTS = {g.result for g in events.GENERATIONS}
#: A fixed-width bar, so the line reads the same in any terminal wider than about 70.
_BAR_FORMAT = "{desc} |{bar:30}| {percentage:3.0f}% {elapsed}"
#: The state text is padded to this, so the bar does not jump when it changes.
_TEXT_WIDTH = 22


class Progress:
    """A progress line for one operation; a no-op when ``enabled`` is false.

    Safe to feed from the Socket.IO client's thread while the main thread waits.

    :param label: what runs (``bang``, ``continue``, ``generate``...), shown first.
    :param enabled: draw at all (the CLI's ``--progress`` / is-a-terminal decision).
    """

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._bar: tqdm[Any] | None = None
        if enabled:
            self._bar = tqdm(total=100, file=sys.stderr, bar_format=_BAR_FORMAT, dynamic_ncols=True,
                             leave=True, mininterval=0.1, desc=f"{label}: sending")

    # ------------------------------------------------------------ states
    def queued(self, position: int | None, total: int | None = None, eta_s: float | None = None) -> None:
        """Waiting for a worker: show the place in the queue (and a rough wait)."""
        text = "queued"
        if position:
            text += f" #{position}" + (f" of {total}" if total else "")
        if eta_s:
            text += f", ~{eta_s:.0f} s"
        self._show(text, 0)

    def running(self, percent: float | None = None) -> None:
        """The model runs (``percent`` 0-100 when known)."""
        self._show("generating", percent)

    def note(self, text: str) -> None:
        """Any other state (``loading model``, ``downloading``...), keeping the percent."""
        self._show(text, None)

    def done(self) -> None:
        """Finished: the bar at 100 %, left on screen above the result line."""
        self._show("done", 100)

    # ------------------------------------------------------------ feeds
    def on_event(self, name: str, data: Any) -> None:
        """Feed one device-protocol event (``queue_status``, ``progress_update``...)."""
        if not isinstance(data, dict):
            return
        if name == events.QUEUE_STATUS:
            status = data.get("status")
            if status == "queued":
                self.queued(_int(data.get("position")), _int(data.get("total_queued")),
                            _float(data.get("estimated_seconds")))
            elif status == "warming":
                self.note("loading model")
            elif status == "processing":
                self.running()
        elif name == events.PROCESSING_STARTED:
            self.running()
        elif name == events.PROGRESS_UPDATE:
            self.running(_float(data.get("progress")))
        elif name in _RESULTS:
            self.note("receiving")

    def on_job(self, job: dict[str, Any]) -> None:
        """Feed one ``job_update`` (the ``GET /api/v1/jobs/{id}`` JSON)."""
        status = job.get("status")
        if status == "queued":
            self.queued(_int(job.get("position")), None, _float(job.get("eta_seconds")))
        elif status == "running":
            fraction = _float(job.get("progress"))
            self.running(None if fraction is None else fraction * 100)
        elif status == "completed":
            self.note("downloading")

    # ------------------------------------------------------------ drawing
    def _show(self, text: str, percent: float | None) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._bar.set_description_str(f"{self.label}: {text:<{_TEXT_WIDTH}}", refresh=False)
            if percent is not None:
                self._bar.n = max(0.0, min(100.0, percent))
            self._bar.refresh()

    def close(self) -> None:
        """Stop drawing (the last state stays on screen)."""
        if self._bar is not None:
            with self._lock:
                self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
