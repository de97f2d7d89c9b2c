"""Reward models: a causal-LM backbone with a scalar head, scored at the last non-pad token.

A reward model is a plain `AutoModelForSequenceClassification` with `num_labels=1`, so TRL,
OpenRLHF and `from_pretrained` load it unchanged. Two things live beside the weights:
  * `config.pad_token_id`: set, so transformers' own pooling finds the last real token;
  * `config.reward_normalization = {"gain": g, "bias": b}`: after training, raw scores are
    mapped to `g * raw + b` so the SFT policy's samples score mean 0, std 1. `score()` applies it;
    plain transformers returns raw scores.

The score is read at the last non-pad token whatever the padding side: we compute that index
from the attention mask and pass explicit position ids, so a row scores the same alone, in any
batch, padded left or right.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from prefloop.errors import PrefloopError
from prefloop.models.attention import attention_groups
from prefloop.models.last_layer import contiguous_keys, last_layer_at
from prefloop.models.lm import fuse_activation, pad_rows
from prefloop.models.packing import PackedPairs

NORMALIZATION_KEY = "reward_normalization"
ENSEMBLE_DIR = "ensemble"


# ---- indexing and the forward pass ------------------------------------------------------
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-pad token, for right, left or no padding.  (B, T) -> (B,)

    The rightmost position whose mask is 1; taking the argmax of `position * mask` works for
    every padding side, unlike `mask.sum() - 1`, which is only right for right padding.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got {tuple(attention_mask.shape)}")
    if not bool((attention_mask.sum(dim=1) > 0).all()):
        raise ValueError("every row needs at least one non-pad token")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them.  (B, T)"""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def check_reward_model(model: nn.Module) -> None:
    """A clear error unless `model` has a scalar head (a causal LM has none)."""
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        name = type(model).__name__
        raise PrefloopError(
            f"{name} is not a reward model: it has no scalar head (num_labels=1); "
            "train one with `prefloop reward`"
        )


def reward_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    right_padded: bool = False,
) -> torch.Tensor:
    """Raw (unnormalized) scores of already-tokenized rows, with gradients.  (B, T) -> (B,)

    `right_padded=True` promises that every row's padding is on the right. A causal model's
    real tokens then never see the padding, so the mask can be dropped: same scores, and the
    attention runs as one plain causal kernel instead of a masked one (faster in training).
    """
    check_reward_model(model)
    mask = attention_mask.long()
    idx = last_token_index(mask)  # (B,)
    lengths = mask.sum(dim=1)  # (B,)
    at = torch.arange(idx.shape[0], device=idx.device) * attention_mask.shape[1] + idx  # (B,)
    if right_padded:
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {
            "attention_mask": attention_mask,
            "position_ids": position_ids_for(attention_mask),
        }
    # The last layer only at the read tokens, when each row's tokens are contiguous (padding on
    # one side, one run of 1s in the mask): the padded positions are then outside every row.
    runs = mask[:, 0] + (mask.diff(dim=1) == 1).sum(dim=1)  # (B,) runs of real tokens
    contiguous = bool((runs == 1).all())
    keys = contiguous_keys(at, lengths) if contiguous else None
    return _score_at(model, at, keys, input_ids=input_ids, **kwargs)


def _score_at(
    model: PreTrainedModel,
    at: torch.Tensor,
    keys: tuple[torch.Tensor, torch.Tensor] | None,
    **inputs: Any,
) -> torch.Tensor:
    """Raw scores read at flat token positions `at` (R,) of the backbone's output; given each
    row's `keys` (flat positions (R, L) and which are real), the last layer runs at `at` only
    (models/last_layer.py)."""
    backbone = model.base_model
    with last_layer_at(backbone, at, keys):
        hidden = backbone(**inputs, use_cache=False).last_hidden_state  # (N, W, C)
    head: nn.Linear = model.score  # type: ignore[assignment]
    return head(hidden.flatten(0, 1).index_select(0, at)).squeeze(-1).float()  # (R,)


# ---- packing (padding-free training) ------------------------------------------------------
def packed_reward_forward(model: PreTrainedModel, packed: PackedPairs) -> torch.Tensor:
    """Raw scores of packed pairs (models/packing.py), with gradients: equal to `reward_forward`
    on the same rows padded (up to float rounding), for models `takes_4d_mask` accepts.
    -> (2B,)"""
    check_reward_model(model)
    with attention_groups(packed.groups):  # bf16 training attends pair by pair (attention.py)
        return _score_at(
            model,
            packed.last,
            (packed.keys, packed.key_valid),
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            attention_mask=packed.attention_mask,
        )


# ---- tokenization -----------------------------------------------------------------------
def prompt_token_ids(tokenizer: Any, prompt: str | Sequence[dict[str, str]]) -> list[int]:
    """The prompt's ids exactly as SFT and the sampler format them (`encode_prompt`): plain text
    as is, a conversation through the chat template. An empty prompt is EOS (document start)."""
    from prefloop.data.sft import encode_prompt

    return encode_prompt(tokenizer, prompt) or [int(tokenizer.eos_token_id)]


def encode_pair(
    tokenizer: Any, prompt: str | Sequence[dict[str, str]], response: str, max_length: int
) -> list[int]:
    """Token ids of prompt + response + EOS, the way the policy saw them.

    A compared response is complete, so it ends with EOS. When too long, the prompt loses
    tokens from its start: the response is what the score is about.
    """
    return encode_pairs(tokenizer, [prompt], [response], max_length)[0]


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    responses: Sequence[str],
    max_length: int,
) -> list[list[int]]:
    """`encode_pair` for many rows: responses tokenized in one batched call, each distinct
    prompt once (pairs share prompts)."""
    if len(prompts) != len(responses):
        raise PrefloopError(f"{len(prompts)} prompts but {len(responses)} responses")
    eos = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    cache: dict[str, list[int]] = {}
    out = []
    for prompt, response_ids in zip(prompts, encoded, strict=True):
        key = prompt if isinstance(prompt, str) else repr(prompt)
        if key not in cache:
            cache[key] = prompt_token_ids(tokenizer, prompt)
        tail = (list(response_ids) + eos)[-max_length:]
        keep = max_length - len(tail)
        out.append((cache[key][-keep:] if keep > 0 else []) + tail)
    return out


def max_positions(model: PreTrainedModel) -> int:
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


# ---- normalization ----------------------------------------------------------------------
def normalization(model: PreTrainedModel) -> tuple[float, float]:
    """(gain, bias) stored in the config; (1, 0) before normalization."""
    norm = getattr(model.config, NORMALIZATION_KEY, None) or {}
    return float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0))


def set_normalization(model: PreTrainedModel, raw_scores: torch.Tensor) -> tuple[float, float]:
    """Choose gain and bias so that `raw_scores` map to mean 0, std 1; store them in the config."""
    mean = float(raw_scores.mean())
    std = float(raw_scores.std()) if raw_scores.numel() > 1 else 0.0
    gain = 1.0 / std if std > 1e-6 else 1.0
    norm = {"gain": gain, "bias": -mean * gain, "raw_mean": mean, "raw_std": std}
    setattr(model.config, NORMALIZATION_KEY, norm)
    return gain, -mean * gain


# ---- scoring text -----------------------------------------------------------------------
@torch.no_grad()
def score(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    responses: Sequence[str],
    batch_size: int = 32,
    *,
    padding_side: str | None = None,
    raw: bool = False,
) -> torch.Tensor:
    """Scores of (prompt, response) rows.  -> (N,) float32, normalized unless `raw`.

    A prompt is text or a conversation (a list of {"role", "content"} messages).

    Rows are sorted by length before batching (less padding); the result does not depend on
    batch composition or padding side.
    """
    check_reward_model(model)
    if len(prompts) != len(responses):
        raise PrefloopError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise PrefloopError("batch_size must be >= 1", field="batch_size")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise PrefloopError("the reward model's tokenizer has no pad token")
    limit = max_positions(model)
    rows = encode_pairs(tokenizer, prompts, responses, limit)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), dtype=torch.float32)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = str(padding_side or getattr(tokenizer, "padding_side", None) or "right")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_rows([rows[i] for i in chunk], pad_id, side)
        out[chunk] = reward_forward(model, ids.to(device), mask.to(device)).cpu()
    model.train(was_training)
    if raw:
        return out
    gain, bias = normalization(model)
    return out * gain + bias


# ---- building and loading ---------------------------------------------------------------
def _without_dropout(config: Any) -> None:
    """Dropout off: the score of a text must not depend on a coin (rlhf-notes: Dropout OFF)."""
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in name or name.endswith("pdrop")):
            setattr(config, name, 0.0)


def build_reward_model(sft_ref: str | Path, tokenizer: Any, seed: int = 0) -> PreTrainedModel:
    """A reward model initialized from a causal-LM (SFT) checkpoint: same backbone weights, a
    new scalar head drawn from N(0, 1/sqrt(d+1)) (no bias), dropout off, pad token set."""
    if tokenizer.pad_token_id is None:
        raise PrefloopError("the tokenizer has no pad token; the reward model needs one")
    config = fuse_activation(AutoConfig.from_pretrained(str(sft_ref), num_labels=1))
    _without_dropout(config)
    config.pad_token_id = tokenizer.pad_token_id
    config.problem_type = "regression"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "score.weight MISSING" load report is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(sft_ref), config=config, dtype=torch.float32, attn_implementation="sdpa"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    check_reward_model(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # a pad token added by load_tokenizer
    d_model = model.score.in_features
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = torch.randn(model.score.weight.shape, generator=gen) / math.sqrt(d_model + 1)
        model.score.weight.copy_(head)
    model.config.architectures = [type(model).__name__]
    return model


def _checked_config(path: str) -> Any:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise PrefloopError(f"cannot load a reward model from {path}: {e}") from None
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
        kind = ", ".join(archs) or "an unknown architecture"
        raise PrefloopError(
            f"{path} is not a reward model ({kind}): it has no scalar head (num_labels=1); "
            "train one with `prefloop reward`"
        )
    return config


def load_reward_model(ref: str | Path, workspace: Any = None) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) of a reward model version, path or hub id, in eval mode.

    `workspace` (a Workspace) resolves version names, `production` and `latest:reward`. The
    normalization stored with the checkpoint is applied by `score()`.
    """
    from transformers import AutoTokenizer

    path = workspace.resolve(str(ref)) if workspace is not None else str(ref)
    config = fuse_activation(_checked_config(path))
    _without_dropout(config)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=torch.float32, attn_implementation="sdpa"
    )
    check_reward_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        raise PrefloopError(f"{path}: the reward model's tokenizer has no pad token")
    model.eval()
    return model, tokenizer


# ---- ensembles --------------------------------------------------------------------------
@dataclass
class EnsembleScores:
    """Scores of an ensemble: per-member (M, N), their mean and spread (std over members)."""

    members: torch.Tensor
    mean: torch.Tensor
    spread: torch.Tensor


class RewardEnsemble:
    """N reward models scored together. The spread flags responses the models disagree on —
    where the policy may be exploiting one model's mistakes."""

    def __init__(self, models: Sequence[PreTrainedModel], tokenizer: Any) -> None:
        if not models:
            raise PrefloopError("a reward ensemble needs at least one model")
        self.models = list(models)
        self.tokenizer = tokenizer

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32
    ) -> EnsembleScores:
        members = torch.stack(
            [score(m, self.tokenizer, prompts, responses, batch_size) for m in self.models]
        )  # (M, N)
        spread = members.std(dim=0) if len(self.models) > 1 else torch.zeros_like(members[0])
        return EnsembleScores(members=members, mean=members.mean(dim=0), spread=spread)


def ensemble_member_dirs(path: str | Path) -> list[Path]:
    """The extra members saved under `<version>/ensemble/member-<i>/` (the root is member 0)."""
    root = Path(path) / ENSEMBLE_DIR
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name)


def load_reward_ensemble(ref: str | Path, workspace: Any = None) -> RewardEnsemble:
    """All members of a reward model version (one member when it was trained alone)."""
    path = workspace.resolve(str(ref)) if workspace is not None else str(ref)
    model, tokenizer = load_reward_model(path)
    models = [model] + [load_reward_model(d)[0] for d in ensemble_member_dirs(path)]
    return RewardEnsemble(models, tokenizer)


def read_normalization(path: str | Path) -> dict[str, float]:
    """The normalization block of a saved reward model's config.json ({} when absent)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return dict(config.get(NORMALIZATION_KEY) or {})
