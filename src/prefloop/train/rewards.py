"""Reward sources: what scores a (prompt, response) during PPO and evaluation.

A source is anything with `score(prompts, responses) -> Tensor (N,)` and a `name`. Sources:
  * a reward-model version (`model:REF` or a bare REF: version name, `latest:reward`, path);
    it re-tokenizes the text with its own tokenizer, so policy and reward model may differ;
  * a Python function (`python:package.module.function`), called as f(prompts, responses)
    and returning one float per row — e.g. `python:prefloop.feedback.gold.sentiment_gold`;
  * a reward model served over HTTP (`http://host:port`, see `prefloop serve-reward`).
Several sources combine as a weighted sum: `["0.8*latest:reward", "0.2*python:my.mod.f"]`.

Scores are untrusted data: a non-finite value is passed through as NaN (the rollout drops the
row and counts it), never silently replaced.
"""

from __future__ import annotations

import importlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from prefloop.errors import PrefloopError


class RewardSource(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """(N,) float32 scores; NaN where the source could not score a row."""
        ...


class RewardModelSource:
    """A trained reward model (AutoModelForSequenceClassification, num_labels=1), normalized."""

    def __init__(self, ref: str, workspace: Any = None, batch_size: int = 32) -> None:
        from prefloop.models.reward import load_reward_model

        self.name = f"model:{ref}"
        self.path = workspace.resolve(ref) if workspace is not None else ref
        self.model, self.tokenizer = load_reward_model(self.path)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        from prefloop.models.reward import score

        return score(self.model, self.tokenizer, list(prompts), list(responses), self.batch_size)


class FunctionSource:
    """A Python function f(prompts, responses) -> sequence of floats (e.g. a gold scorer)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or f"python:{fn.__module__}.{getattr(fn, '__qualname__', 'fn')}"

    @classmethod
    def from_path(cls, dotted: str) -> FunctionSource:
        module_name, _, attr = dotted.replace(":", ".").rpartition(".")
        if not module_name:
            raise PrefloopError(f"'{dotted}' is not module.function", field="reward")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise PrefloopError(
                f"cannot import reward function '{dotted}': {e}", field="reward"
            ) from None
        if not callable(fn):
            raise PrefloopError(f"'{dotted}' is not callable", field="reward")
        return cls(fn, name=f"python:{dotted}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        return as_scores(self.fn(list(prompts), list(responses)), len(prompts), self.name)


class HttpSource:
    """A reward model behind `prefloop serve-reward`: POST {prompts, responses} to URL/score."""

    def __init__(self, url: str, timeout: float = 60.0, batch_size: int = 256) -> None:
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/score") else "/score")
        self.name = f"http:{url}"
        self.timeout = timeout
        self.batch_size = batch_size

    def _post(self, prompts: list[str], responses: list[str]) -> Any:
        body = json.dumps({"prompts": prompts, "responses": responses}).encode()
        req = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise PrefloopError(f"reward server {self.url} failed: {e}", field="reward") from None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            p, r = list(prompts[i : i + self.batch_size]), list(responses[i : i + self.batch_size])
            reply = self._post(p, r)
            if not isinstance(reply, dict) or "scores" not in reply:
                raise PrefloopError(f"reward server {self.url} sent no 'scores'", field="reward")
            out.append(as_scores(reply["scores"], len(p), self.name))
        return torch.cat(out) if out else torch.empty(0)


class WeightedSum:
    """Σ_i w_i · source_i(prompt, response); NaN if any member is NaN for that row."""

    def __init__(self, parts: Sequence[tuple[float, RewardSource]]) -> None:
        if not parts:
            raise PrefloopError("no reward source given", field="reward")
        self.parts = list(parts)
        self.name = " + ".join(f"{w:g}*{s.name}" for w, s in self.parts)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        total = torch.zeros(len(prompts))
        for weight, source in self.parts:
            total = total + weight * source.score(prompts, responses).float()
        return total


def as_scores(values: Any, n: int, name: str) -> Tensor:
    """Validate a source's output: n numbers (non-numbers become NaN and are dropped later)."""
    if isinstance(values, Tensor):
        values = values.detach().float().flatten().tolist()
    try:
        values = list(values)
    except TypeError:
        raise PrefloopError(
            f"reward source {name} returned {type(values).__name__}, not a list"
        ) from None
    if len(values) != n:
        raise PrefloopError(f"reward source {name} returned {len(values)} scores for {n} rows")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else math.nan)
    return torch.tensor(out, dtype=torch.float32)


def parse_source(spec: str, workspace: Any = None) -> tuple[float, RewardSource]:
    """`[WEIGHT*]SOURCE` -> (weight, source). See the module docstring for SOURCE forms."""
    weight = 1.0
    head, star, rest = spec.partition("*")
    if star:
        try:
            weight = float(head)
        except ValueError:
            raise PrefloopError(f"bad reward weight '{head}' in '{spec}'", field="reward") from None
        spec = rest
    spec = spec.strip()
    if not spec:
        raise PrefloopError("empty reward source", field="reward")
    if spec.startswith(("http://", "https://")):
        return weight, HttpSource(spec)
    if spec.startswith("python:"):
        return weight, FunctionSource.from_path(spec.removeprefix("python:"))
    return weight, RewardModelSource(spec.removeprefix("model:"), workspace)


def build_reward(specs: Sequence[str], workspace: Any = None) -> RewardSource:
    """One source, or the weighted sum of several."""
    parts = [parse_source(s, workspace) for s in specs]
    if len(parts) == 1 and parts[0][0] == 1.0:
        return parts[0][1]
    return WeightedSum(parts)


def reward_models(source: RewardSource) -> list[RewardModelSource]:
    """The reward-model sources inside `source` (the value model may be initialized from one)."""
    if isinstance(source, RewardModelSource):
        return [source]
    if isinstance(source, WeightedSum):
        return [s for _, s in source.parts if isinstance(s, RewardModelSource)]
    return []
