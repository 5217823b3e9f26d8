"""Job kinds: one module a kind, each registering one :class:`JobKind` subclass.

To add a kind: write ``g4l/worker/kinds/<name>.py`` with a ``@register``-ed subclass of
:class:`~g4l.worker.kinds.registry.JobKind`, import it here, and give the service that
queues it a :class:`~g4l.jobs.spec.GenerationSpec` for it.
"""

from g4l.worker.kinds import bang, continuation, generate, retry, station, text_to_audio  # noqa: F401  (registrations)
from g4l.worker.kinds.registry import JobKind, Outcome, Run, get, names, register

__all__ = ["JobKind", "Outcome", "Run", "get", "names", "register"]
