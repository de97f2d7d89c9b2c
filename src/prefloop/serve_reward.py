"""`prefloop serve-reward`: a reward source served over HTTP, for PPO runs on another machine.

    POST /score   {"prompts": [...], "responses": [...]}  ->  {"scores": [float | null, ...]}
    GET  /health  -> {"status": "ok", "source": NAME}

A score that is not a finite number comes back as null; `HttpSource` turns it into NaN, which
the rollout drops and counts. Request sizes are bounded: the server scores untrusted text.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from prefloop.errors import PrefloopError
from prefloop.train.rewards import RewardSource

MAX_ROWS = 1024
MAX_CHARS = 20_000

Text = Annotated[str, Field(max_length=MAX_CHARS)]


class ScoreRequest(BaseModel):
    prompts: list[Text] = Field(max_length=MAX_ROWS)
    responses: list[Text] = Field(max_length=MAX_ROWS)


class ScoreReply(BaseModel):
    scores: list[float | None]


def create_app(source: RewardSource) -> FastAPI:
    app = FastAPI(title="prefloop reward server")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "source": source.name}

    @app.post("/score")
    def score(req: ScoreRequest) -> ScoreReply:
        if len(req.prompts) != len(req.responses):
            raise HTTPException(
                422, f"{len(req.prompts)} prompts but {len(req.responses)} responses"
            )
        if not req.prompts:
            return ScoreReply(scores=[])
        try:
            values = source.score(req.prompts, req.responses).tolist()
        except PrefloopError as e:
            raise HTTPException(422, str(e)) from None
        return ScoreReply(scores=[v if math.isfinite(v) else None for v in values])

    return app
