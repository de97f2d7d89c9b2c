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
