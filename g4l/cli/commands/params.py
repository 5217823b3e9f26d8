"""Generation parameters on the command line, shared by bang, continue, retry and generate."""

from __future__ import annotations

import argparse
from typing import Any

#: The protocol's prompt length limits (plugin_protocol.payloads), checked by the server.
DEFAULT_PROMPT_S = 6


def add_sampling(parser: argparse.ArgumentParser, *, model_help: str) -> None:
    """The model and sampler options (all optional: the server or session supplies the rest)."""
    group = parser.add_argument_group("generation")
    group.add_argument("--model", "-m", help=model_help)
    group.add_argument("--seed", type=int, help="seed for a reproducible result (-1 or none: the server picks one)")
    group.add_argument("--top-k", type=int, help="top-k sampling (default 250)")
    group.add_argument("--top-p", type=float, help="nucleus sampling; 0 uses top-k (default 0)")
    group.add_argument("--temperature", type=float, help="softmax temperature (default 1.0)")
    group.add_argument("--cfg-coef", type=float, help="classifier-free guidance (default 3.0)")


def add_session_params(parser: argparse.ArgumentParser, *, prompt_default: int | None) -> None:
    """The device's parameters: sampling plus prompt length, text guidance and duration."""
    add_sampling(parser, model_help="model id from the server's allowlist"
                                    + (" (default: the server's default)" if prompt_default else
                                       " (default: the session's)"))
    group = parser.add_argument_group("session")
    default = f"default {prompt_default}" if prompt_default else "default: the session's"
    group.add_argument("--prompt-duration", "-p", type=int, default=prompt_default, metavar="S",
                       help=f"seconds of the audio the model continues from, 1-30 ({default})")
    group.add_argument("--description", help="text guidance (empty: none)")
    group.add_argument("--duration", "-d", type=float, metavar="S",
                       help="seconds the model produces, its prompt included (default 30)")


def session_params(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol's field names and values of the given options (None: not given)."""
    return {"model_name": args.model, "prompt_duration": args.prompt_duration, "seed": args.seed,
            "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature,
            "cfg_coef": args.cfg_coef, "description": args.description, "duration": args.duration}
