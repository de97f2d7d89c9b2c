"""GPT-2's tanh GELU under CPU training (models/activation.py): the compiled route computes the
same function as ATen's kernel up to rounding (bf16, and large float32 tensors), forward and
backward; everything else (small float32, no grad) is ATen's kernel bit for bit; a failed compile
falls back with a warning."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from prefloop.models import activation


def _gelu64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tanh GELU and its derivative in float64."""
    x = x.double()
    k = math.sqrt(2 / math.pi)
    t = torch.tanh(k * (x + 0.044715 * x**3))
    dy = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    return 0.5 * x * (1 + t), dy


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 96, generator=g) * 3
    x[0, 0] = torch.linspace(-9, 9, 96)  # the tails and zero
    return x.bfloat16().requires_grad_(), torch.randn(x.shape, generator=g).bfloat16()


def test_compiled_bf16_gelu_matches_the_tanh_gelu_within_bf16_rounding(monkeypatch) -> None:
    calls: list[str] = []
    for name, part in (("forward", activation._forward), ("backward", activation._backward)):
        fn = part.fn
        monkeypatch.setattr(part, "fn", lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
        monkeypatch.setattr(part, "_compiled", None)
    x, g = _inputs()
    y = activation.tanh_gelu(x)
    y.backward(g)
    assert calls == ["forward", "backward"] and y.dtype == torch.bfloat16
    exact, slope = _gelu64(x.detach())
    ulp = 2.0**-8  # bf16 keeps 8 significant bits: one rounding is within half of this
    assert ((y.double() - exact).abs() <= ulp * exact.abs() + 1e-6).all()
    aten = F.gelu(x.detach(), approximate="tanh").double()
    assert (y.double() - aten).abs().max() <= (aten - exact).abs().max() + ulp * 2
    grad = g.double() * slope
    assert x.grad is not None
    assert ((x.grad.double() - grad).abs() <= 2 * ulp * grad.abs() + 1e-3).all()


def test_compiled_float32_gelu_matches_the_tanh_gelu_to_float32_rounding(monkeypatch) -> None:
    monkeypatch.setattr(activation, "FLOAT32_MIN_ELEMENTS", 1000)  # small tensors, same route
    x, g = (t.detach().float() for t in _inputs())
    x.requires_grad_()
    with torch.no_grad():  # no gradient wanted: ATen's kernel
        assert not activation.compiled_route(x)
        assert torch.equal(activation.tanh_gelu(x), F.gelu(x, approximate="tanh"))
    assert activation.compiled_route(x)
    y = activation.tanh_gelu(x)
    y.backward(g)
    exact, slope = _gelu64(x.detach())
    assert (y.double() - exact).abs().max() <= 1e-5 * (1 + exact.abs().max())
    assert x.grad is not None
    assert (x.grad.double() - g.double() * slope).abs().max() <= 1e-5
    monkeypatch.setattr(activation, "FLOAT32_MIN_ELEMENTS", x.numel() + 1)
    assert not activation.compiled_route(x)  # below the size where it pays


@pytest.mark.parametrize("case", ["float32", "bf16 without grad", "bf16 under no_grad"])
def test_other_tensors_take_atens_kernel_bit_for_bit(case: str, monkeypatch) -> None:
    monkeypatch.setattr(activation._GELU, "apply", lambda x: pytest.fail("compiled"))
    x, _ = _inputs()
    x = x.detach()
    if case == "float32":
        x = x.float().requires_grad_()
    elif case == "bf16 under no_grad":
        x.requires_grad_()
    with torch.set_grad_enabled(case != "bf16 under no_grad"):
        assert torch.equal(activation.tanh_gelu(x), F.gelu(x, approximate="tanh"))


def test_a_failed_compile_falls_back_to_aten_with_one_warning(monkeypatch) -> None:
    def no_compiler(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    part = activation.Compiled(activation.gelu_and_slope, activation.gelu_and_slope, "the GELU")
    part._compiled = no_compiler
    monkeypatch.setattr(activation, "_forward", part)
    x, _ = _inputs()
    aten = F.gelu(x.detach(), approximate="tanh")
    with pytest.warns(UserWarning, match="compiling the GELU failed"):
        y = activation.tanh_gelu(x)  # the same function, eager
    assert (y.double() - aten.double()).abs().max() <= 2.0**-7 * aten.abs().max()
    assert part.broken  # later calls go straight to ATen, without another warning
    assert torch.equal(activation.tanh_gelu(x), aten)


def test_install_swaps_gpt2s_gelu_and_keeps_its_outputs(make_model, tokenizer) -> None:
    model = make_model("gpt2", n_layer=3)
    ids = torch.tensor([tokenizer("a short test sentence")["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
        assert activation.install(model) == 3
        assert activation.install(model) == 0  # already swapped
        after = model(ids).logits
    assert torch.equal(before, after)
    assert all(type(block.mlp.act) is activation.TanhGELU for block in model.transformer.h)


def test_uninstall_puts_back_the_very_modules(make_model) -> None:
    model = make_model("gpt2")
    before = [block.mlp.act for block in model.transformer.h]
    activation.install(model)
    assert activation.uninstall(model) == 2
    assert [block.mlp.act for block in model.transformer.h] == before


@pytest.mark.parametrize("compile_gelu", [True, False])
def test_bf16_training_runs_the_compiled_gelu_unless_turned_off(
    compile_gelu, make_model, tokenizer, texts, tmp_path
) -> None:
    from prefloop.train.lm import LanguageModelingTask
    from prefloop.train.loop import LoopConfig, train

    seen: list[type] = []

    class Records(LanguageModelingTask):
        def loss(self, model, batch):  # type: ignore[no-untyped-def]
            seen.append(type(model.transformer.h[0].mlp.act))
            return super().loss(model, batch)

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:8] for t in texts[:40]]
    rows = [(r, r) for r in ids if len(r) == 8][:4]
    model = make_model("gpt2")
    original = model.transformer.h[0].mlp.act
    cfg = LoopConfig(max_steps=1, checkpoint_every=0, bf16=True, compile_gelu=compile_gelu)
    train(model, Records(rows, [], 4, 1, tokenizer.pad_token_id), cfg, tmp_path, progress=False)
    assert seen == [activation.TanhGELU if compile_gelu else type(original)]
    assert model.transformer.h[0].mlp.act is original  # the model leaves as it came
