"""The commands, one module per concern. Each module's ``register(subparsers, parents)``
adds its sub-commands, each with ``run(args, options) -> Outcome`` as its default."""

from . import generate, health, history, jerry, session, station, transform

#: In the order ``g4l --help`` lists them.
MODULES = (session, history, transform, generate, jerry, station, health)
