"""THE sampler: batched generation with a KV cache, and the matching log-prob computation.

Pairs for people to compare, PPO rollouts and evaluation all sample here. Log-probs are those
of the full temperature-scaled distribution, log softmax(logits / T), whatever top-p / top-k
cut: this is exactly what `sequence_logprobs` recomputes in a separate forward pass, so the PPO
ratio is 1 at the first step (rlhf-notes: temperature must divide the logits in both places).

Shapes: B = batch rows (prompts x n samples), P = padded prompt length, R = response length,
V = vocabulary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from prefloop.config import option
from prefloop.errors import PrefloopError
from prefloop.models.lm import context_length


@dataclass
class SamplingParams:
    max_new_tokens: int = option(32, "maximum tokens generated per response")
    temperature: float = option(1.0, "softmax temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling: keep the smallest token set with this much mass")
    top_k: int = option(0, "keep only the k most likely tokens (0 = off)")
    n: int = option(1, "samples per prompt")
    seed: int | None = option(None, "seed for reproducible sampling")
    batch_size: int = option(64, "rows generated together (prompts x n)")
    truncation: str = option(
        "left", "prompt longer than the context: 'left' (truncate, warn) or 'error'"
    )


@dataclass
class Generation:
    """One entry per (prompt, sample), prompt-major: rows i*n .. i*n+n-1 belong to prompt i."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # up to and including EOS when finished
    logprobs: list[list[float]]  # log softmax(logits / T) of each response token
    finished: list[bool]  # True when the response ended with EOS
    texts: list[str] = field(default_factory=list)  # decoded responses, special tokens removed


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, T) -> (B, T), 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and attention mask, padded on the left so every prompt ends at column P-1."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(
    rows: list[list[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = width if width is not None else max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# Nucleus sampling looks at the top candidates first: a trained model's nucleus almost always
# lies inside its 256 most likely tokens, and a top-k of the vocabulary is far cheaper than a
# full sort (the sort dominated sampling time). When it does not, the full sort is used: exact.
CANDIDATES = 256


def sample_tokens(
    logp: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token per row from log-probs (B, V), restricted to the top-k, then the top-p nucleus.

    Top-k is applied first and the nucleus is taken of the renormalized top-k mass (as in
    transformers). Draws by inverse CDF: one uniform per row instead of one per vocabulary entry.
    """
    B, V = logp.shape
    k = V if top_k <= 0 else min(top_k, V)
    u = torch.rand((B, 1), generator=generator)
    if k == V and top_p >= 1.0:  # plain sampling: inverse CDF over the whole vocabulary
        cdf = logp.exp().cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=V - 1).squeeze(-1)
    width = min(k, CANDIDATES)
    vals, idx = torch.topk(logp, width, dim=-1)  # sorted, descending
    probs = vals.exp()
    covered = k == width or (k == V and bool((probs.sum(-1) >= top_p).all()))
    if not covered:  # a sort is cheaper than a top-k of (nearly) the whole vocabulary
        vals, idx = torch.sort(logp, dim=-1, descending=True)
        vals, idx = vals[:, :k], idx[:, :k]
        probs = vals.exp()
    probs = probs / probs.sum(-1, keepdim=True)  # renormalize within the top-k
    if top_p < 1.0:
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)  # keep the token that crosses top_p
    cdf = probs.cumsum(-1)
    j = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=probs.shape[-1] - 1)
    return idx.gather(-1, j).squeeze(-1)


def sequence_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits (B, T, V) of a forward pass with padding-aware position ids."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    )
    return out.logits


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[target]: (B, R, V), (B, R) -> (B, R)."""
    t = temperature if temperature > 0 else 1.0
    return (
        torch.log_softmax(logits.float() / t, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    )


def sequence_logprobs(
    model: PreTrainedModel,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (B, R) of `response` after left-padded `query`, and the response logits (B, R, V)."""
    ids = torch.cat([query, response], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    logits = sequence_logits(model, ids, mask)[:, query.shape[1] - 1 : -1]  # (B, R, V)
    return token_logprobs(logits, response, temperature), logits


class Sampler:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.context = context_length(model)

    def encode(self, prompts: list[str], params: SamplingParams) -> list[list[int]]:
        room = self.context - params.max_new_tokens
        if room < 1:
            raise PrefloopError(
                f"max_new_tokens={params.max_new_tokens} leaves no room in the context of {self.context}"
            )
        rows = []
        for i, p in enumerate(prompts):
            ids = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            if len(ids) > room:
                if params.truncation == "error":
                    raise PrefloopError(
                        f"prompt has {len(ids)} tokens; at most {room} fit with "
                        f"max_new_tokens={params.max_new_tokens}",
                        row=i + 1,
                        field="prompt",
                    )
                warnings.warn(
                    f"prompt {i + 1} left-truncated from {len(ids)} to {room} tokens", stacklevel=2
                )
                ids = ids[-room:]
            rows.append(ids or [self.eos_id])  # an empty prompt starts from EOS (document start)
        return rows

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams | None = None) -> Generation:
        params = params or SamplingParams()
        rows = [r for r in self.encode(prompts, params) for _ in range(params.n)]
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        out = Generation([p for p in prompts for _ in range(params.n)], rows, [], [], [])
        for start in range(0, len(rows), params.batch_size):
            resp, lps, fin = self.generate_ids(rows[start : start + params.batch_size], params, gen)
            out.response_ids += resp
            out.logprobs += lps
            out.finished += fin
        out.texts = self.tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
        return out

    @torch.no_grad()
    def generate_ids(
        self, rows: list[list[int]], params: SamplingParams, gen: torch.Generator | None = None
    ) -> tuple[list[list[int]], list[list[float]], list[bool]]:
        """Sample continuations of already-tokenized prompts (one batch)."""
        was_training = self.model.training
        self.model.eval()
        ids, mask = left_pad(rows, self.pad_id)  # (B, P)
        B = ids.shape[0]
        cache = DynamicCache()
        pos = position_ids(mask)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        ).logits[:, -1]  # (B, V)
        next_pos = pos[:, -1:] + 1  # (B, 1)
        tokens = torch.empty((B, params.max_new_tokens), dtype=torch.long)
        logprobs = torch.zeros((B, params.max_new_tokens))
        done = torch.zeros(B, dtype=torch.bool)
        steps = 0
        for t in range(params.max_new_tokens):
            t_ = params.temperature if params.temperature > 0 else 1.0
            logp = torch.log_softmax(logits.float() / t_, -1)  # (B, V), once per token
            if params.temperature > 0:
                tok = sample_tokens(logp, params.top_k, params.top_p, gen)  # (B,)
            else:
                tok = logp.argmax(-1)
            lp = logp.gather(-1, tok[:, None]).squeeze(-1)
            tok = tok.masked_fill(done, self.pad_id)
            tokens[:, t] = tok
            logprobs[:, t] = lp.masked_fill(done, 0.0)
            steps = t + 1
            done |= tok == self.eos_id
            if bool(done.all()) or t == params.max_new_tokens - 1:
                break
            mask = torch.cat([mask, (~done | (tok == self.eos_id)).long()[:, None]], dim=1)
            logits = self.model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        self.model.train(was_training)
        resp, lps, fin = [], [], []
        for i in range(B):
            row = tokens[i, :steps].tolist()
            n = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
            resp.append(row[:n])
            lps.append(logprobs[i, :n].tolist())
            fin.append(self.eos_id in row)
        return resp, lps, fin
