"""``bang`` (``process_audio_request``): a new session's first generation, continuing the
FIRST ``prompt_duration`` seconds of the uploaded audio; the result is the model's 30 s."""

from __future__ import annotations

from g4l.jobs.kinds import KindName
from g4l.worker.kinds.session import SessionKind


class Bang(SessionKind):
    name = KindName.BANG
