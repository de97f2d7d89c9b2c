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


class _ThreeLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.unused, self.b = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_master_weights_step_like_torch_adamw_and_skip_weights_without_gradients():
    """MasterWeights.step over its flat buffers = torch's AdamW on float32 copies of the
    weights under autocast (decay on matrices only, as make_optimizer groups them); a weight
    that got no gradient keeps its value and gets no optimizer state, like torch's."""
    from prefloop.configs import LoopConfig
    from prefloop.train.loop import make_optimizer
    from prefloop.train.precision import MasterWeights

    torch.manual_seed(0)
    ours, ref = _ThreeLinears(), _ThreeLinears()
    ref.load_state_dict(ours.state_dict())
    cfg = LoopConfig(lr=1e-2, weight_decay=0.1)
    weights = MasterWeights(ours, bf16=True)
    assert ours.a.weight.dtype == torch.bfloat16
    opt, opt_ref = make_optimizer(weights.params, cfg), make_optimizer(list(ref.parameters()), cfg)
    for _ in range(3):
        x = torch.randn(4, 8)
        weights.zero_grad()
        opt_ref.zero_grad()
        weights.begin_backward()
        for model in (ours, ref):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x).float().square().mean().backward()
        weights.end_step_backward()
        opt.step()
        weights.step(opt)
        opt_ref.step()
    with weights.full_precision():
        for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    unused = weights.params[2:4]  # its weight and bias, as AdamW holds them
    assert all(not opt.state[m] for m in unused)
    assert torch.equal(ours.unused.weight.float(), ref.unused.weight.detach().bfloat16().float())
