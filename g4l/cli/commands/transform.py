"""terry on the command line: ``g4l transform --variation lofi_chill`` rewrites the current
session's audio (or a WAV) in a preset's style, with the device protocol's
``transform_audio_request`` and a progress bar; ``g4l variations`` lists the presets.
``g4l undo`` goes back to what the transform started from."""

from __future__ import annotations

import argparse
from typing import Any

from g4l.cli import files
from g4l.cli.commands.session import _generate, _session, session_option
from g4l.cli.http import Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``transform`` and ``variations``."""
    p = sub.add_parser("transform", parents=parents, help="rewrite the session's audio in a preset's style (terry)",
                       description="MelodyFlow rewrites the current session's audio (or the given WAV: in the "
                                   "current session, or a new one with --new or when there is none) toward a "
                                   "preset's style. The result has the input's length and format and becomes the "
                                   "session's current audio; `g4l undo` brings back what it started from.")
    p.add_argument("input", nargs="?", help="the WAV to transform (default: the session's current audio)")
    p.add_argument("-o", "--output", help="where to write the result (default: g4l-<session>-transform.wav)")
    session_option(p, new=True)
    group = p.add_argument_group("transform")
    group.add_argument("--variation", "-V", help="a preset (`g4l variations` lists them); required unless --prompt")
    group.add_argument("--prompt", dest="custom_prompt", help="your own style text (replaces the preset's)")
    group.add_argument("--solver", choices=("euler", "midpoint"), help="euler (default, 25 steps) or midpoint (64)")
    group.add_argument("--flowstep", type=float, help="how much is rewritten, more than 0 and less than 1 "
                                                      "(default: the preset's, 0.12)")
    group.add_argument("--steps", type=int, help="solver steps, 1-250 (default: the solver's)")
    group.add_argument("--seed", type=int, help="seed for a reproducible result (-1 or none: the server picks one)")
    p.set_defaults(run=run_transform)

    p = sub.add_parser("variations", parents=parents, help="terry's presets",
                       description="The presets `g4l transform --variation` takes, with the text each moves toward.")
    p.set_defaults(run=run_variations)


def run_transform(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l transform [file] --variation NAME``."""
    sid = _session(args, opts, required=args.input is None)
    wav = files.read_input(args.input) if args.input else None
    params = {"variation": args.variation, "custom_prompt": args.custom_prompt, "solver": args.solver,
              "flowstep": args.flowstep, "steps": args.steps, "seed": args.seed}
    return _generate(opts, "transform", args.output, session_id=sid, wav=wav, params=params)


def run_variations(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l variations``: ``GET /variations``."""
    listing = Api(opts.url, opts.api_key).get("/api/v1/variations")
    lines = [f"{v['name']:<22} {v['text']}" for v in listing["variations"]]
    return Outcome({"command": "variations", **listing}, "\n".join(lines))
