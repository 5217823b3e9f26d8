"""``g4l``: the command line client of a g4l server, for people and scripts.

A client only: it speaks the device protocol through :mod:`plugin_protocol.client` and the
HTTP API with ``requests``, and imports no server module (``tests/test_layers.py``).
Usage: ``docs/cli.md``; entry point :func:`g4l.cli.main.main`.
"""
