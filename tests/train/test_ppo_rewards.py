"""Reward sources for PPO: Python functions, weighted sums, the HTTP reward server, bad specs."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from prefloop.errors import PrefloopError
from prefloop.serve_reward import create_app
from prefloop.train.rewards import (
    FunctionSource,
    HttpSource,
    WeightedSum,
    as_scores,
    build_reward,
    parse_source,
)


def length(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


def flaky(prompts: list[str], responses: list[str]) -> list[object]:
    return [1.0, float("nan"), "oops", None, float("inf")][: len(responses)]


def test_function_source_and_weighted_sum() -> None:
    w, src = parse_source("python:prefloop.feedback.gold.sentiment_gold")
    assert w == 1.0
    scores = src.score(["a", "b"], [" I love it, wonderful.", " It is terrible."])
    assert scores[0] > 0.5 and scores[1] < -0.3
    combo = WeightedSum([(2.0, FunctionSource(length)), (-1.0, FunctionSource(length))])
    assert combo.score(["p"], ["abcd"]).tolist() == [4.0]
    assert "2*python:" in combo.name


def test_non_numbers_become_nan_and_wrong_counts_fail() -> None:
    out = FunctionSource(flaky).score(["p"] * 5, ["r"] * 5)
    assert out[0].item() == 1.0 and all(math.isnan(v) for v in out[1:].tolist())
    with pytest.raises(PrefloopError, match="returned 1 scores for 2 rows"):
        as_scores([1.0], 2, "f")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:nosuch.module.f", "cannot import"),
        ("abc*python:x.y", "bad reward weight"),
        ("python:math.pi", "not callable"),
        ("   ", "empty reward source"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(PrefloopError, match=message):
        build_reward([spec])


def test_reward_server_app() -> None:
    client = TestClient(create_app(FunctionSource(flaky, name="flaky")))
    assert client.get("/health").json() == {"status": "ok", "source": "flaky"}
    reply = client.post("/score", json={"prompts": ["p", "q"], "responses": ["a", "b"]})
    assert reply.status_code == 200 and reply.json() == {"scores": [1.0, None]}
    bad = client.post("/score", json={"prompts": ["p"], "responses": ["a", "b"]})
    assert bad.status_code == 422
    assert client.post("/score", json={"prompts": [1], "responses": "x"}).status_code == 422


def test_http_source_against_live_server() -> None:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(FunctionSource(length)), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        src = HttpSource(f"http://127.0.0.1:{port}", batch_size=2)
        assert torch.equal(src.score(["p"] * 3, ["a", "bb", "ccc"]), torch.tensor([1.0, 2.0, 3.0]))
    finally:
        server.should_exit = True
        thread.join(timeout=5)
    with pytest.raises(PrefloopError, match="reward server"):
        HttpSource(f"http://127.0.0.1:{port}", timeout=2).score(["p"], ["a"])
