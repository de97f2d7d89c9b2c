"""The bf16 weights' AdamW (train/adamw.py) against torch's own, compiled and eager."""

from __future__ import annotations

import pytest
import torch

from prefloop.train import adamw


@pytest.fixture(params=["compiled", "eager"])
def route(request, monkeypatch):
    if request.param == "eager":  # what runs where compiling fails (no C++ compiler)
        monkeypatch.setattr(adamw._compiled, "broken", True)
        monkeypatch.setattr(adamw._compiled_norm, "broken", True)
    return request.param


@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("clip", [1.0, 3.5])
def test_one_pass_equals_torch_adamw_then_casts(route, grad_dtype, clip):
    torch.manual_seed(0)
    n = 300_001  # not a multiple of any vector width, and more than one eager chunk
    master = torch.randn(n) * 0.05
    ref = torch.nn.Parameter(master.clone())
    opt = torch.optim.AdamW([ref], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    avg, avg_sq, working = torch.zeros(n), torch.zeros(n), torch.empty(n, dtype=torch.bfloat16)
    for step in range(1, 4):
        grad = (torch.randn(n) * 1e-2).to(grad_dtype)
        ref.grad = grad.float() / clip  # what clip_grad_norm_ would leave
        opt.step()
        s = adamw.AdamWScalars.of(1e-3, 0.1, (0.9, 0.95), 1e-8, step, grad_scale=clip)
        adamw.adamw_step(master, avg, avg_sq, grad, working, s)
        # float32 rounding apart (values ~5e-2, ~1e-3, ~1e-4: atol ~1e-6 of each)
        torch.testing.assert_close(master, ref.detach(), rtol=1e-6, atol=5e-8)
        torch.testing.assert_close(avg, opt.state[ref]["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(avg_sq, opt.state[ref]["exp_avg_sq"], rtol=1e-6, atol=1e-10)
        assert torch.equal(working, master.to(torch.bfloat16))  # the rounded new master
    assert adamw._compiled.broken == (route == "eager")


def test_squared_norm_is_float32_accurate_for_bf16(route):
    torch.manual_seed(1)
    x = (torch.randn(500_000) * 3e-3).to(torch.bfloat16)
    exact = x.double().square().sum()
    got = adamw.squared_norm(x)
    assert got.dtype == torch.float32
    assert abs(float(got) / float(exact) - 1) < 1e-5
