"""The web process: Flask + Flask-SocketIO on gevent. It parses, validates, queues and
relays; it never runs a model or long CPU work on its event loop."""
