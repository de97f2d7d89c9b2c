"""CPU bf16 attention under grad runs in float32 (models/attention.py): same values as the
float32 attention up to bf16 rounding of its output, gradients reach q, k and v, and anything
else (no grad, float32) goes to transformers' SDPA unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prefloop.models import attention


class _Attn(torch.nn.Module):
    is_causal = True


def _qkv(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 4, 9, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_bf16_under_grad_is_float32_attention() -> None:
    q, k, v = _qkv(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.sdpa_float32_backward(_Attn(), q, k, v, None)
    assert out.dtype == torch.bfloat16  # handed back in the dtype autocast runs in
    out.float().square().sum().backward()

    # the same inputs attended in float32 outside autocast, the output rounded to bf16 once
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected, _ = sdpa_attention_forward(_Attn(), *exact, None)
    expected.bfloat16().float().square().sum().backward()
    assert torch.equal(out, expected.bfloat16())
    for t, t32 in zip((q, k, v), exact, strict=True):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16
        assert t32.grad is not None
        assert torch.equal(t.grad, t32.grad.bfloat16())
    # and it is not what autocast's own bf16 attention gives
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = sdpa_attention_forward(_Attn(), q, k, v, None)
    assert not torch.equal(out, plain)


def test_bf16_additive_mask_and_float32_rope_query() -> None:
    """Llama-family RoPE leaves q and k float32 and only v bf16 under autocast; an additive
    mask may come in bf16. Both still take the float32 path and give float32 attention."""
    q, k, v = _qkv(torch.bfloat16)
    q32, k32 = (t.detach().float().requires_grad_() for t in (q, k))
    mask = torch.zeros(3, 1, 9, 9).masked_fill(torch.ones(9, 9).triu(1).bool(), -1e4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.sdpa_float32_backward(_Attn(), q32, k32, v, mask)
    assert out.dtype == torch.bfloat16
    expected, _ = sdpa_attention_forward(_Attn(), q32, k32, v.float(), mask.float())
    assert torch.equal(out, expected.bfloat16())
    out.float().sum().backward()
    assert q32.grad is not None and v.grad is not None and v.grad.dtype == torch.bfloat16


def test_a_bf16_llama_trains_with_float32_attention(monkeypatch) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    seen: list[tuple[torch.dtype, ...]] = []
    inner = attention.sdpa_attention_forward

    def spy(module, q, k, v, mask, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return inner(module, q, k, v, mask, **kw)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
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
    assert len(seen) == 2  # one call per layer, each on the float32 path
    assert all(dtypes == (torch.float32,) * 3 for dtypes in seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_calls_pass_through(dtype: torch.dtype) -> None:
    q, k, v = _qkv(dtype)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(3, 1, 9, 9)
    with torch.no_grad():
        expected, _ = sdpa_attention_forward(_Attn(), q, k, v, mask)
        got, _ = attention.sdpa_float32_backward(_Attn(), q, k, v, mask)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_install_registers_the_wrapper_as_sdpa() -> None:
    attention.install()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.sdpa_float32_backward
