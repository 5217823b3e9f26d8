"""The sampling contract: the one place the sampling parameters' bounds are written.

The device payloads (:mod:`plugin_protocol.payloads`), the HTTP API's models and the
server's generation spec (``g4l.jobs.spec.Sampling``) all use these types, so a value one
of them accepts is accepted by every other (and one it refuses is refused by all). They
live in the protocol package because its clients (the ``g4l`` CLI) import no server code.

The bounds are the widest any existing client relies on: temperature up to 10 and
``cfg_coef`` up to 30 (the device protocol and ``/api/v1`` accepted them; stations
accepted a narrower range, which these include).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

TOP_K_MAX = 10_000
TEMPERATURE_MAX = 10.0
CFG_COEF_MAX = 30.0

#: Sample among the k likeliest tokens (0: no top-k filter).
TopK = Annotated[int, Field(ge=0, le=TOP_K_MAX)]
#: Nucleus sampling threshold (0: use top_k instead).
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
#: Softmax temperature.
Temperature = Annotated[float, Field(gt=0.0, le=TEMPERATURE_MAX)]
#: Classifier-free guidance strength.
CfgCoef = Annotated[float, Field(ge=0.0, le=CFG_COEF_MAX)]
