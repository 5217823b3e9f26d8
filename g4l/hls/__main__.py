"""``python -m g4l.hls``: the HLS packager process (started by the launcher), until SIGTERM."""

from __future__ import annotations

import signal

from g4l import log as logging_setup
from g4l.context import Context
from g4l.hls.packager import Packager
from g4l.log import get_logger
from g4l.settings import get_settings


def main() -> None:
    """Run the packager; SIGTERM/SIGINT stop it, keeping stream files for a successor."""
    settings = get_settings()
    logging_setup.configure(settings.log_level, settings.log_format, process="hls")
    ctx = Context.from_settings(settings)
    packager = Packager(ctx, name=settings.packager_name or None)

    def on_signal(signum: int, frame: object) -> None:
        packager.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    packager.run()
    get_logger("g4l.hls").info("hls packager exited")


if __name__ == "__main__":
    main()
