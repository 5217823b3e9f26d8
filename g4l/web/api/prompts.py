"""``POST /api/v1/prompt/build``: musical attributes in, a MusicGen description out."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from g4l.services.prompts import build_prompt
from g4l.web.api.models import PromptBuildRequest, PromptBuildResponse, PromptComponents
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation


def blueprint() -> Blueprint:
    bp = Blueprint("api_prompts", __name__, url_prefix=PREFIX)

    @bp.post("/prompt/build")
    @operation("buildPrompt", "Build a text prompt from genre, tempo, mood, instruments and style",
               tags=["prompts"], body=PromptBuildRequest, responses={200: PromptBuildResponse})
    def build(body: PromptBuildRequest) -> Any:
        built = build_prompt(genre=body.genre, tempo=body.tempo, mood=body.mood, instruments=body.instruments,
                             artist_style=body.artist_style)
        return PromptBuildResponse(structured_prompt=built.structured_prompt,
                                   components=PromptComponents(**built.components))  # type: ignore[arg-type]

    return bp
