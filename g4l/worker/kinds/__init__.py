"""The runners of the job kinds, listed explicitly: a worker runs exactly these.

What each kind is lives in :mod:`g4l.jobs.kinds`; here is only how a job of it becomes a
result (one module a kind, a :class:`~g4l.worker.kinds.registry.JobKind` subclass).
"""

from g4l.jobs.kinds import KindName
from g4l.worker.kinds.bang import Bang
from g4l.worker.kinds.continuation import Continue
from g4l.worker.kinds.generate import Generate
from g4l.worker.kinds.registry import JobKind, Outcome, Run
from g4l.worker.kinds.retry import Retry
from g4l.worker.kinds.station import Station
from g4l.worker.kinds.text_to_audio import TextToAudio
from g4l.worker.kinds.transform import Transform

#: The shipped runners, one a kind of :data:`g4l.jobs.kinds.KINDS` (tests/test_kinds.py).
RUNNERS: dict[KindName, JobKind] = {runner.name: runner for runner in (
    Bang(), Continue(), Retry(), Generate(), Station(), TextToAudio(), Transform(),
)}

__all__ = ["RUNNERS", "JobKind", "Outcome", "Run"]
