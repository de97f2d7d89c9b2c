"""The last decoder layer computed only at the tokens that are read (a reward model's scores).

A reward model reads one hidden state per row: the final one at the row's last token. Every
layer but the last is needed at every position (the next layer attends to its keys and values),
but the last layer's query, attention output, MLP and residual matter only at the read
positions; only its keys and values are needed everywhere. Computing the rest at R positions
instead of all N x W saves about (10/12) / n_layers of the backbone's arithmetic, forward and
backward: a sixth at 6 layers, two fifths at 2.

Implemented for the GPT-2 and Llama/Qwen2 decoder layers (transformers 5), on top of their own
modules and weights, and tested against the full forward pass (tests/models/test_last_layer.py);
any other layer or an unusual setting runs the plain full layer.

Shapes: N rows (or packed lines) of W tokens, C hidden size, R read positions, L the longest
row read, H query heads, K key/value heads, D head size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prefloop.models import attention

_LLAMA_LIKE = ("llama", "qwen2")
# The stand-in replaces the model's last layer for the duration of a forward pass, so two threads
# scoring with one model (a FastAPI threadpool in `prefloop serve-reward`) must not overlap.
_SWAP = threading.RLock()


def _layers(backbone: nn.Module) -> nn.ModuleList | None:
    layers = getattr(backbone, "h", None) or getattr(backbone, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) else None


def supported(backbone: nn.Module) -> bool:
    """Whether `backbone`'s last layer can be computed at the read positions only."""
    config: Any = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    layers = _layers(backbone)
    if layers is None or getattr(backbone, "gradient_checkpointing", False):
        return False
    # Dropout inside the attention is not reproduced (reward models run with dropout off).
    if model_type == "gpt2":
        # the query is sliced out of c_attn's weight: only a plain Conv1D (an adapter-wrapped
        # one, e.g. LoRA, runs the full layer)
        plain = type(getattr(layers[-1].attn, "c_attn", None)).__name__ == "Conv1D"
        return (
            plain
            and not config.add_cross_attention
            and config.attn_pdrop == config.resid_pdrop == 0
        )
    if model_type in _LLAMA_LIKE:
        types = getattr(config, "layer_types", None) or ["full_attention"]
        return types[-1] == "full_attention" and not config.attention_dropout
    return False


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:  # fmt: skip
    """One query per read row over its row's keys.  q (R, H, D), k/v (N*W, K, D) -> (R, H*D)"""
    heads, kv_heads = q.shape[1], k.shape[1]
    keys = _rows(k, rows).transpose(1, 2)  # (R, K, L, D)
    values = _rows(v, rows).transpose(1, 2)  # (R, K, L, D)
    if kv_heads != heads:  # grouped-query attention: each key/value head serves H/K query heads
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)
        values = values.repeat_interleave(heads // kv_heads, dim=1)
    mask = valid[:, None, None, :]  # (R, 1, 1, L)
    if attention.slow_bf16_sdpa(q, keys, values):
        # one query per row: the math route's scores are tiny, and SDPA's bf16 backward is slow
        out = attention.bf16_math_attention(None, q.unsqueeze(2), keys, values, mask, scale)
        return out.flatten(1)  # (R, 1, H, D) -> (R, H*D)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask, scale=scale)
    return out.flatten(1)  # (R, H, 1, D) -> (R, H*D)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along dim 0 for an index of any shape, through index_select: its backward is
    an index_add, ~6x faster on CPU than the accumulating index_put of x[index]'s backward."""
    return x.index_select(0, index.flatten()).view(*index.shape, *x.shape[1:])


class _ReadPositionsLayer(nn.Module):
    """Stands in for the last decoder layer while `last_layer_at` is active."""

    def __init__(
        self, layer: nn.Module, model_type: str, at: torch.Tensor, keys: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layer, self.model_type, self.at = layer, model_type, at
        self.rows, self.valid = keys, valid

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        flat = hidden_states.flatten(0, 1)  # (N*W, C)
        if self.model_type == "gpt2":
            out = self._gpt2(flat)
        else:
            cos, sin = (  # (N*W, 1, D); (1, W, D) when the positions are shared by all rows
                t.expand(*hidden_states.shape[:2], -1).flatten(0, 1).unsqueeze(1)
                for t in kwargs["position_embeddings"]
            )
            out = self._llama(flat, cos, sin)
        # Only the read positions hold the last layer's output; nothing reads the others.
        full = torch.zeros_like(flat).index_copy(0, self.at, out)
        return full.view_as(hidden_states)

    def _gpt2(self, flat: torch.Tensor) -> torch.Tensor:
        layer: Any = self.layer  # a transformers decoder layer (typed by its family)
        attn = layer.attn
        c = flat.shape[1]
        d = attn.head_dim
        x = layer.ln_1(flat)  # (N*W, C)
        w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: (C, 3C), (3C,)
        q = torch.addmm(b[:c], _rows(x, self.at), w[:, :c])  # (R, C)
        kv = torch.addmm(b[c:], x, w[:, c:])  # (N*W, 2C)
        k, v = kv.view(-1, 2, c // d, d).unbind(1)  # (N*W, H, D) each
        a = _attend(q.view(-1, c // d, d), k, v, self.rows, self.valid, attn.scaling)
        h = _rows(flat, self.at) + attn.c_proj(a)  # (R, C)
        return h + layer.mlp(layer.ln_2(h))

    def _llama(self, flat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import rotate_half

        layer: Any = self.layer  # a transformers decoder layer (typed by its family)
        attn = layer.self_attn
        d = attn.head_dim
        x = layer.input_layernorm(flat)  # (N*W, C)
        q = attn.q_proj(_rows(x, self.at)).unflatten(-1, (-1, d))  # (R, H, D)
        k = attn.k_proj(x).unflatten(-1, (-1, d))  # (N*W, K, D)
        v = attn.v_proj(x).unflatten(-1, (-1, d))  # (N*W, K, D)
        q = q * _rows(cos, self.at) + rotate_half(q) * _rows(sin, self.at)
        k = k * cos + rotate_half(k) * sin
        a = _attend(q, k, v, self.rows, self.valid, attn.scaling)
        h = _rows(flat, self.at) + attn.o_proj(a)  # (R, C)
        return h + layer.mlp(layer.post_attention_layernorm(h))


def contiguous_keys(at: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, valid) (R, L) for rows whose `lengths` (R,) tokens lie side by side ending at the
    flat positions `at` (R,): padded rows, left or right."""
    span = torch.arange(int(lengths.max()), device=at.device)
    valid = span < lengths[:, None]  # (R, L)
    start = at - lengths + 1
    return (start[:, None] + span).clamp(max=at[:, None]), valid


@contextmanager
def last_layer_at(
    backbone: nn.Module, at: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor] | None
) -> Iterator[bool]:
    """Within the block, `backbone`'s last layer computes its output only at the flat positions
    `at` (R,) (line * W + column, each a row's last token); `keys` = (positions, valid), both
    (R, L): the flat positions of each row's tokens (the ones its last token attends to) and
    which entries are real. Elsewhere the layer's output is zero. Yields whether that is in
    effect: with `keys=None` or an unsupported backbone the model runs unchanged (yields False).

    Forward passes inside the block are serialized across threads (see _SWAP): run the whole
    forward of a scoring call inside it, swapped or not."""
    with _SWAP:
        layers = _layers(backbone)
        if keys is None or layers is None or not supported(backbone):
            yield False
            return
        original = layers[-1]
        model_type = str(getattr(backbone.config, "model_type", ""))
        layers[-1] = _ReadPositionsLayer(original, model_type, at, *keys)
        try:
            yield True
        finally:
            layers[-1] = original
