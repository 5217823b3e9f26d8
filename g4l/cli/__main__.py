"""``python -m g4l.cli``: the same as the ``g4l`` console script."""

from g4l.cli.main import main

raise SystemExit(main())
