"""The g4l device protocol: event names, payload schemas, normalisation, a reference client.

Shared by the server (``g4l``), the tests, the CLI and any integrator. It depends on
pydantic and python-socketio only, never on the server.
"""

from plugin_protocol import events
from plugin_protocol.normalize import PayloadError, parse_payload

__all__ = ["events", "PayloadError", "parse_payload"]
