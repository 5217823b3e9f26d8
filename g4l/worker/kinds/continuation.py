"""``continue`` (``continue_music_request``): continue the LAST ``prompt_duration`` seconds;
the result is the input minus them plus the model's 30 s. The session remembers the input,
so a retry can redo this continue."""

from __future__ import annotations

from typing import Any

from g4l.jobs.kinds import KindName
from g4l.jobs.records import Job
from g4l.worker.kinds.session import SessionKind


class Continue(SessionKind):
    name = KindName.CONTINUE

    def learns(self, job: Job) -> dict[str, Any]:
        return {"retry_input_blob": job.spec.input_blob}
