"""CPU bf16 attention under grad (models/attention.py): short sequences go through bf16
matmuls around a float32 softmax, long ones (or with dropout) through float32 attention; both
agree with float32 attention up to bf16 rounding, gradients reach q, k and v, and anything else
(no grad, float32) goes to transformers' SDPA unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prefloop.models import attention


class _Attn(torch.nn.Module):
    is_causal = True


def _qkv(dtype: torch.dtype, T: int = 9) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 4, T, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _float32_reference(q, k, v, mask, weights):  # type: ignore[no-untyped-def]
    """Float32 SDPA on the same (bf16-valued) inputs: output and gradients of <out, weights>."""
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    m = mask.float() if mask is not None and mask.is_floating_point() else mask
    out, _ = sdpa_attention_forward(_Attn(), *exact, m)
    (out * weights).sum().backward()
    return out, [t.grad for t in exact]


def _padding_mask(T: int) -> torch.Tensor:
    """Causal, with row 0 left-padded by 3: its padding queries see no key at all."""
    keep = torch.ones(T, T, dtype=torch.bool).tril().expand(3, 1, T, T).clone()
    keep[0, :, :, :3] = False
    return keep


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
def test_short_bf16_attention_under_grad_matches_float32(mask_kind: str, monkeypatch) -> None:
    calls: list[int] = []
    math = attention.bf16_math_attention
    monkeypatch.setattr(
        attention, "bf16_math_attention", lambda *a, **k: calls.append(1) or math(*a, **k)
    )
    q, k, v = _qkv(torch.bfloat16)
    mask = {
        "causal": None,
        "bool": _padding_mask(9),
        "additive": torch.zeros(3, 1, 9, 9).masked_fill(~_padding_mask(9), -1e4).bfloat16(),
    }[mask_kind]
    weights = torch.randn(3, 9, 4, 8, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.sdpa_training(_Attn(), q, k, v, mask)
    assert calls == [1]  # the math route
    assert out.dtype == torch.bfloat16  # handed back in the dtype autocast runs in
    (out.float() * weights).sum().backward()
    expected, grads = _float32_reference(q, k, v, mask, weights)
    real = slice(3, None)  # row 0's padding queries (0-2) see nothing: their output is unused
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float()[:, real], expected[:, real], atol=3e-2, rtol=2e-2)
    for t, g32 in zip((q, k, v), grads, strict=True):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16
        assert torch.isfinite(t.grad).all()
        assert torch.allclose(t.grad.float()[1:], g32[1:], atol=5e-2, rtol=5e-2)


def test_gqa_math_route_repeats_key_value_heads() -> None:
    class _Gqa(_Attn):
        num_key_value_groups = 2

    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 6, 8, generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(2, 2, 6, 8, generator=g).bfloat16().requires_grad_() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.sdpa_training(_Gqa(), q, k, v, None)
    expected, _ = sdpa_attention_forward(_Gqa(), q.float(), k.float(), v.float(), None)
    assert torch.allclose(out.float(), expected, atol=3e-2, rtol=2e-2)
    out.float().sum().backward()
    assert k.grad is not None and k.grad.shape == k.shape


@pytest.mark.parametrize("route", ["long", "dropout"])
def test_long_or_dropout_bf16_under_grad_is_float32_attention(route: str) -> None:
    T = attention.MATH_MAX_KEYS + 1 if route == "long" else 9
    extra = {"dropout": 0.1} if route == "dropout" else {}
    q, k, v = _qkv(torch.bfloat16, T)
    if route == "dropout":
        torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.sdpa_training(_Attn(), q, k, v, None, **extra)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()

    # the same inputs attended in float32 outside autocast, the output rounded to bf16 once
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    if route == "dropout":
        torch.manual_seed(0)
    expected, _ = sdpa_attention_forward(_Attn(), *exact, None, **extra)
    expected.bfloat16().float().square().sum().backward()
    assert torch.equal(out, expected.bfloat16())
    for t, t32 in zip((q, k, v), exact, strict=True):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16
        assert t32.grad is not None
        assert torch.equal(t.grad, t32.grad.bfloat16())


def test_a_bf16_llama_trains_through_the_math_route(monkeypatch) -> None:
    """Llama's RoPE leaves q and k float32 under autocast (only v bf16): still rerouted."""
    from transformers import LlamaConfig, LlamaForCausalLM

    seen: list[tuple[torch.dtype, ...]] = []
    inner = attention.bf16_math_attention

    def spy(module, q, k, v, mask, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return inner(module, q, k, v, mask, **kw)

    monkeypatch.setattr(attention, "bf16_math_attention", spy)
    attention.install()
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, num_hidden_layers=2, max_position_embeddings=32,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 50, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert seen == [(torch.float32, torch.float32, torch.bfloat16)] * 2  # one call per layer
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_calls_pass_through(dtype: torch.dtype) -> None:
    q, k, v = _qkv(dtype)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(3, 1, 9, 9)
    with torch.no_grad():
        expected, _ = sdpa_attention_forward(_Attn(), q, k, v, mask)
        got, _ = attention.sdpa_training(_Attn(), q, k, v, mask)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_install_registers_the_wrapper_as_sdpa() -> None:
    attention.install()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.sdpa_training
