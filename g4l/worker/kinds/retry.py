"""``retry`` (``retry_music_request``): the last continue again, from the input it used
(its spec names that input; the session keeps remembering it for the next retry)."""

from __future__ import annotations

from g4l.jobs.kinds import KindName
from g4l.worker.kinds.session import SessionKind


class Retry(SessionKind):
    name = KindName.RETRY
