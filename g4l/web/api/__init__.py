"""The HTTP API under ``/api/v1``: jobs, session twins of the device events, the prompt
builder, the OpenAPI document and its docs page. Wired into the app by
:func:`g4l.web.app.install_api` (the web's one composition root). See docs/http-api.md.
"""
