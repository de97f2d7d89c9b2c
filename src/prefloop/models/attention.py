"""Attention for CPU training: packed reward lines pair by pair, and bf16 away from SDPA's slow
bf16 backward.

Packed reward lines (inside `attention_groups`, models/packing.py) attend pair by pair in
either precision (`grouped_attention`, pairs of up to MATH_MAX_KEYS tokens: it keeps each
pair's scores for backward): no token attends outside its pair, so a line of W tokens holding
k pairs needs ~W^2 / k scores where SDPA under the lines' block mask computes W^2. Float32
lines of ~616 tokens (a 21M benchmark batch): 0.94-0.95x the forward + backward time of SDPA
over lines of 192 (Zen 3 host, docs/benchmarks.md).

Autocast runs `scaled_dot_product_attention` in bf16. On CPU (torch 2.13) its flash-attention
forward is as fast in bf16 as in float32, but its backward is 3-4x slower (fwd+bwd 42 vs 13 ms
for 32 x 8 heads x 52 tokens x 64 on a Xeon with AMX; docs/benchmarks.md). So while gradients
are on, CPU bf16 attention takes one of two routes:

- short sequences (keys <= MATH_MAX_KEYS = 192, no dropout): written out as two bf16 matmuls
  around a float32 softmax, as transformers' eager attention does under autocast (scores
  (B, H, Tq, Tk) materialized; 1.6x faster than the float32 flash kernel at 52 tokens). The
  scores are bf16 products, as in any bf16 attention; masking and softmax are float32.
- otherwise: the float32 flash kernel (no T^2 buffer), its output handed back in bf16.
- packed reward lines: pair by pair as above (pairs up to MATH_MAX_KEYS tokens; longer ones
  take the routes above over whole lines), the scale and the pairs' mask inside the score
  matmul (baddbmm), so the scaled scores are bf16, rounded once (float32 softmax as above).

"bf16" means any of query, key and value: Llama-family RoPE multiplies q and k by float32 cos/sin
under autocast, so there only the value arrives in bf16 (autocast would cast all three down).
Sampling and scoring run without grad and keep transformers' SDPA (its bf16 forward is fast).

`install()` registers the wrapper as transformers' "sdpa" attention (its documented extension
point, `AttentionInterface.register`); the training loop calls it when a run starts on CPU.
Anything else (float32 outside packed lines, no grad) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

if TYPE_CHECKING:
    from prefloop.models.packing import AttentionGroups

# Packed reward batches (models/packing.py) set this while their forward runs: attention then
# runs pair by pair (`grouped_attention`) wherever it sees the packed lines' shape.
_GROUPS: ContextVar[AttentionGroups | None] = ContextVar("prefloop_attention_groups", default=None)


@contextmanager
def attention_groups(groups: AttentionGroups | None) -> Iterator[None]:
    """Within: CPU training attention over the packed lines runs pair by pair."""
    token = _GROUPS.set(groups if groups is not None and groups.pays() else None)
    try:
        yield
    finally:
        _GROUPS.reset(token)


# Up to this many keys the math route wins (fwd+bwd, AMX host: 8.7 vs 13.4 ms at 52 keys, 21
# vs 27 ms at 128); at 256 the two tie and at 512 flash is 2x faster (and holds no T^2 scores).
MATH_MAX_KEYS = 192


def bf16_math_attention(
    module: torch.nn.Module | None,  # for its num_key_value_groups (None: 1)
    query: torch.Tensor,  # (B, H, Tq, D)
    key: torch.Tensor,  # (B, Hkv, Tk, D)
    value: torch.Tensor,  # (B, Hkv, Tk, D)
    attention_mask: torch.Tensor | None,  # bool (keep) or additive, broadcastable to (B, H, Tq, Tk)
    scaling: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v with bf16 matmuls and a float32 softmax; (B, Tq, H, D)."""
    with torch.autocast("cpu", enabled=False):
        n_rep = getattr(module, "num_key_value_groups", 1)
        q = query.to(torch.bfloat16)
        k = repeat_kv(key.to(torch.bfloat16), n_rep)
        v = repeat_kv(value.to(torch.bfloat16), n_rep)
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)  # (B, H, Tq, Tk)
        # in place: scores is this function's own buffer, and neither op's backward reads it;
        # finfo.min, not -inf: a padding query that sees no key gets finite (unused) output
        if attention_mask is None:  # causal, query i at key i (callers check Tq == Tk)
            keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores.masked_fill_(~keep, torch.finfo(scores.dtype).min)
        elif attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores.add_(attention_mask)
        probs = torch.softmax(scores, dim=-1).to(torch.bfloat16)
        return torch.matmul(probs, v).transpose(1, 2).contiguous()


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (N, H, W, D): packed lines
    key: torch.Tensor,
    value: torch.Tensor,
    groups: AttentionGroups,
    scaling: float | None = None,
) -> torch.Tensor:
    """Attention pair by pair: each pair's tokens gathered from its line into (H, B, G, D),
    attended under the pair's own mask, and put back. In bf16 if any input is (bf16 matmuls
    around a float32 softmax, as `bf16_math_attention`), else in the inputs' dtype. A line of
    W tokens holding k pairs costs W^2 scores where its pairs need ~W^2 / k. -> (N, W, H, D)

    A position of no pair (padding) gets a copy of some real token's output, and no gradient
    goes back from it: exact because nothing the loss depends on reads those positions (no
    real token attends to them; a reward model reads only each row's last token).

    Heads lead, pairs second: the gathers then write each (G, D) block contiguously, and
    the matmuls get contiguous operands (strided ones take ~2x as long on CPU)."""
    n, h, w, d = query.shape
    layout = groups.layout
    b, g = layout.index.shape
    index, inverse = layout.index.view(-1), layout.inverse  # (B*G,), (N*W,)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (N, Hx, W, D) -> (Hx, B, G, D)
        flat = x.transpose(0, 1).reshape(x.shape[1], n * w, d)  # a view of (N, W, H, D) data
        return _Rows.apply(flat, index, inverse, layout.unpaired).view(-1, b, g, d)

    n_rep = getattr(module, "num_key_value_groups", 1)
    dtype = compute_dtype(query, key, value)
    with torch.autocast("cpu", enabled=False):
        q = gather(query).to(dtype).view(h * b, g, d)
        k, v = (gather(x).to(dtype) for x in (key, value))  # (Hkv, B, G, D)
        if n_rep > 1:  # grouped-query attention: each key/value head serves n_rep query heads
            k, v = k.repeat_interleave(n_rep, dim=0), v.repeat_interleave(n_rep, dim=0)
        k, v = k.view(h * b, g, d), v.view(h * b, g, d)
        scale = scaling if scaling is not None else d**-0.5
        # scale and mask inside the matmul: bf16 scores are then scaled and masked, rounded once
        # (eager attention under autocast rounds them twice); ~1.5 ms less per layer (fwd +
        # bwd) than float32 scores scaled and masked in passes of their own. The same numbers
        # as those when the scale is a power of two (head size 16, 64, 256)
        scores = torch.baddbmm(groups.bias(h, dtype), q, k.transpose(1, 2), alpha=scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        out = torch.bmm(probs, v)  # (H*B, G, D)
    out = _Rows.apply(out.view(h, b * g, d), inverse, index, layout.padding)  # (H, N*W, D)
    return out.view(h, n, w, d).permute(1, 2, 0, 3)


class _Rows(torch.autograd.Function):
    """y = x[:, index]; the gradient goes back the same way: dx = dy[:, back], with the entries
    `zero` of dx set to zero.

    index_select computes the same forward, but its backward is an index_add into a zeroed
    buffer, where a gather writes each entry once. The gather is exact here: each entry of `x`
    that the loss depends on is read at one index i only (and back of it = i); the other reads
    (a pair's padding, which no real token attends to; a position in no pair, which no real
    token reads) get exactly zero gradient anyway, and the entries of `x` that matter only to
    them are the `zero` ones. So the result is bit for bit index_select's."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, index: torch.Tensor, back: torch.Tensor, zero: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(back, zero)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        back, zero = ctx.saved_tensors
        return grad.index_select(1, back).index_fill_(1, zero, 0), None, None, None


def compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """bf16 if any of `xs` is (autocast's matmul dtype), else the first one's dtype."""
    return torch.bfloat16 if any(x.dtype == torch.bfloat16 for x in xs) else xs[0].dtype


def slow_bf16_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether SDPA would run its slow CPU bf16 backward here: bf16 inputs on CPU, under grad."""
    bf16 = compute_dtype(query, key, value) == torch.bfloat16
    return bf16 and query.device.type == "cpu" and torch.is_grad_enabled()


def sdpa_training(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' `sdpa_attention_forward`, rerouted under grad on CPU for packed lines and
    for bf16 tensors."""
    groups = _GROUPS.get()
    if (
        groups is not None
        and query.device.type == "cpu"
        and torch.is_grad_enabled()
        and query.shape[0] == key.shape[0] == groups.lines
        and query.shape[2] == key.shape[2] == groups.width
        # long pairs: SDPA's flash kernel over the lines, which keeps no (G, G) scores (float32
        # HH-RLHF-sized pairs of ~1,000 tokens would keep ~0.5 GB of them a layer)
        and groups.group <= MATH_MAX_KEYS
        and _math_route(module, query, key, attention_mask, kwargs, max_keys=groups.width)
    ):
        out = grouped_attention(module, query, key, value, groups, scaling=kwargs.get("scaling"))
        return out, None
    if not slow_bf16_sdpa(query, key, value):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if _math_route(module, query, key, attention_mask, kwargs):
        out = bf16_math_attention(
            module, query, key, value, attention_mask, scaling=kwargs.get("scaling")
        )
        return out, None
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(torch.bfloat16), weights  # what autocast's own bf16 attention returns


def _math_route(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    kwargs: dict[str, Any],
    max_keys: int = MATH_MAX_KEYS,
) -> bool:
    """Whether `bf16_math_attention` computes what SDPA would here (up to bf16 rounding):
    short keys, no dropout, no extras (position bias, soft-capping), and causal-without-mask
    only when every query has its own key (SDPA's is_causal is aligned top-left)."""
    extras = any(kwargs.get(k) is not None for k in ("position_bias", "softcap"))
    if key.shape[2] > max_keys or kwargs.get("dropout", 0.0) or extras:
        return False
    if mask is None:
        causal = kwargs.get("is_causal")
        if causal is None:
            causal = getattr(module, "is_causal", True)
        return bool(causal) and query.shape[2] == key.shape[2]
    return True


def install() -> None:
    """Make `sdpa_training` transformers' SDPA attention (idempotent)."""
    AttentionInterface.register("sdpa", sdpa_training)
