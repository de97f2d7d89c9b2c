"""Invariants of THE training loop (TRL-style): accumulation, updates, NaN guard, checkpoints."""

from __future__ import annotations

import pytest
import torch

from prefloop.errors import PrefloopError
from prefloop.train.checkpoint import latest_checkpoint
from prefloop.train.lm import LanguageModelingTask
from prefloop.train.loop import LoopConfig, lr_at, train
from prefloop.train.precision import MasterWeights


def _rows(tokenizer, texts, n=16, width=12):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [r[:width] for r in ids if len(r) >= width][:n]
    assert len(rows) == n
    return [(r, r) for r in rows]


def _cfg(**kw):
    base = dict(
        max_steps=1, lr=1e-2, warmup_steps=0, max_grad_norm=0.0, checkpoint_every=0, log_every=1
    )
    return LoopConfig(**{**base, **kw})


def test_one_batch_of_8_equals_8_accumulated_batches_of_1(make_model, tokenizer, texts, tmp_path):
    rows = _rows(tokenizer, texts, n=8)
    a, b = make_model("gpt2"), make_model("gpt2")
    pad = tokenizer.pad_token_id
    # adam_eps >> |g| makes the first AdamW update ~ lr * g: linear in the gradient, so it
    # compares the accumulated gradients themselves (sign(g) would amplify float noise).
    cfg = dict(lr=1.0, adam_eps=1.0)
    train(a, LanguageModelingTask(rows, [], 8, 1, pad), _cfg(**cfg), tmp_path / "a", progress=False)
    train(
        b,
        LanguageModelingTask(rows, [], 1, 8, pad),
        _cfg(grad_accum=8, **cfg),
        tmp_path / "b",
        progress=False,
    )
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_every_parameter_changes_after_a_step(make_model, tokenizer, texts, tmp_path):
    rows = _rows(tokenizer, texts)
    model = make_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(
        model,
        LanguageModelingTask(rows, [], 4, 1, tokenizer.pad_token_id),
        _cfg(),
        tmp_path,
        progress=False,
    )
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_bf16_autocast_lowers_the_loss_and_keeps_float32_weights(
    make_model, tokenizer, texts, tmp_path
):
    rows = _rows(tokenizer, texts)
    model = make_model("qwen2")
    task = LanguageModelingTask(rows, [], 16, 1, tokenizer.pad_token_id)
    result = train(model, task, _cfg(max_steps=8, lr=3e-3, bf16=True), tmp_path, progress=False)
    losses = [row["loss/train"] for row in result.history]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _without_key_bias_gradient(model: torch.nn.Module) -> torch.nn.Module:
    """GPT-2's key bias trains on a zero gradient, its exact one: the bias shifts all of a
    query's scores by the same amount, which softmax ignores. Computed, it is rounding noise,
    and Adam turns noise into full-size steps (m / sqrt(v) ~ 1), so two runs that round
    differently (oneDNN's bf16 kernels do on some CPUs) move it differently. Llama has no
    biases."""
    for block in getattr(getattr(model, "transformer", None), "h", []):
        bias = block.attn.c_attn.bias  # (3C,): query, key, value
        c = bias.shape[0] // 3
        keep = torch.ones_like(bias)
        keep[c : 2 * c] = 0
        bias.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_master_weights_train_as_autocast_on_float32_weights(
    family, monkeypatch, make_model, tokenizer, texts, tmp_path
):
    """bf16 working weights only skip casts autocast would make: the same training up to
    float32 rounding, accumulation over micro-batches (summed in float32) and clipping included."""
    from prefloop.train import loop

    rows = _rows(tokenizer, texts)
    cfg = _cfg(max_steps=3, bf16=True, grad_accum=2, lr=3e-3, max_grad_norm=1.0)
    task = LanguageModelingTask(rows, [], 4, 2, tokenizer.pad_token_id)
    ours = _without_key_bias_gradient(make_model(family))
    train(ours, task, cfg, tmp_path / "ours", progress=False)
    plain = _without_key_bias_gradient(make_model(family))
    with monkeypatch.context() as m:  # autocast over float32 weights, as before masters
        m.setattr(loop, "MasterWeights", lambda model, bf16: MasterWeights(model, bf16=False))
        train(plain, task, cfg, tmp_path / "plain", progress=False)
    for (name, pa), pb in zip(ours.named_parameters(), plain.parameters(), strict=True):
        assert pa.dtype == torch.float32, name
        # the masters' AdamW (train/adamw.py) rounds in another order than torch's fused one:
        # ~1e-8 apart, up to ~5e-5 at the odd entry where that flips a bf16 rounding (Zen 3's
        # emulated bf16: 1 of 4,096); updates here are ~3e-3, a wrong gradient or step is off
        # by ~1e-3 across a tensor
        torch.testing.assert_close(pa, pb, rtol=0, atol=2e-4, msg=lambda m, n=name: f"{n}: {m}")
        assert ((pa - pb).abs() > 2e-5).float().mean() < 0.01, name


def test_only_weights_autocast_casts_anyway_train_in_bf16(make_model):
    model = make_model("gpt2")  # its LM head is tied to the token embedding
    weights = MasterWeights(model, bf16=True)
    bf16 = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert "transformer.h.0.attn.c_attn.weight" in bf16  # Conv1D (addmm)
    assert "transformer.h.0.mlp.c_fc.bias" in bf16
    assert not any("wte" in n or "wpe" in n or "ln_" in n for n in bf16)  # embeddings, norms
    assert len(weights.params) == len([p for p in model.parameters() if p.requires_grad])
    assert all(p.dtype == torch.float32 for p in weights.params)  # what AdamW steps
    with weights.full_precision():
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "transformer.h.0.attn.c_attn.weight" in {
        n for n, p in model.named_parameters() if p.dtype == torch.bfloat16
    }
    weights.release()
    assert all(p.dtype == torch.float32 for p in model.parameters())


class _RecordsAutocast(LanguageModelingTask):
    """Notes whether batches are made under autocast (PPO makes its experience there)."""

    seen: list[bool]

    def microbatches(self, step):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return super().microbatches(step)


@pytest.mark.parametrize("bf16", [False, True])
def test_batches_are_made_under_the_same_autocast_as_the_loss(
    bf16, make_model, tokenizer, texts, tmp_path
):
    task = _RecordsAutocast(_rows(tokenizer, texts), [], 16, 1, tokenizer.pad_token_id)
    task.seen = []
    train(make_model("gpt2"), task, _cfg(max_steps=2, bf16=bf16), tmp_path, progress=False)
    assert task.seen == [bf16, bf16]
    # a CPU run, either precision, trains with prefloop's attention (models/attention.py)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from prefloop.models.attention import sdpa_training

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_training


def test_warmup_then_cosine_to_floor():
    cfg = LoopConfig(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


class _NanAt(LanguageModelingTask):
    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        return (loss * float("nan") if self.step == 5 else loss), metrics

    def microbatches(self, step):
        self.step = step + 1
        return super().microbatches(step)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    make_model, tokenizer, texts, tmp_path
):
    rows = _rows(tokenizer, texts)
    task = _NanAt(rows, [], 4, 1, tokenizer.pad_token_id)
    with pytest.raises(
        PrefloopError, match=r"loss is nan at step 5; last good checkpoint: .*step-00000004"
    ):
        train(
            make_model("gpt2"),
            task,
            _cfg(max_steps=10, checkpoint_every=2),
            tmp_path,
            progress=False,
        )
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000004"


class _DiesAt(LanguageModelingTask):
    def microbatches(self, step):
        if step == 4:
            raise KeyboardInterrupt  # stands in for a kill after the step-3 checkpoint
        return super().microbatches(step)


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_from_checkpoint_equals_uninterrupted(bf16, make_model, tokenizer, texts, tmp_path):
    rows = _rows(tokenizer, texts)
    pad = tokenizer.pad_token_id
    cfg = _cfg(max_steps=6, checkpoint_every=3, deterministic=True, warmup_steps=2, bf16=bf16)
    full = make_model("qwen2")
    train(full, LanguageModelingTask(rows, [], 4, 1, pad), cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(
            make_model("qwen2"),
            _DiesAt(rows, [], 4, 1, pad),
            cfg,
            tmp_path / "part",
            progress=False,
        )
    resumed = make_model("qwen2")
    torch.manual_seed(123)  # resume must not depend on the RNG state it starts with
    train(
        resumed,
        LanguageModelingTask(rows, [], 4, 1, pad),
        cfg,
        tmp_path / "part",
        resume=True,
        progress=False,
    )
    for (name, pa), pb in zip(full.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("max_norm", [0.0, 1e-3, 1e3])
def test_clipping_inside_the_fused_step_matches_torch(max_norm):
    """grad_norm + clip_in_step + the fused AdamW step = torch's clip_grad_norm_ + the step."""
    from prefloop.train.loop import clip_in_step, grad_norm

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(n, generator=g, requires_grad=True) for n in (5, 300, 1)]
    ours.append(torch.randn(3, 4, generator=g).t().requires_grad_())  # non-contiguous
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn(a.shape, generator=g)
        b.grad = a.grad.clone()
    norm = grad_norm(ours)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm or float("inf"))
    torch.testing.assert_close(norm, expected)
    # a squared norm taken elsewhere (the masters' flat gradient) adds to the parameters'
    torch.testing.assert_close(grad_norm(ours[1:], ours[0].grad.square().sum()), norm)
    opt_ours = torch.optim.AdamW(ours, lr=0.1, fused=True)
    opt_theirs = torch.optim.AdamW(theirs, lr=0.1, fused=True)
    clip_in_step(opt_ours, float(norm), max_norm)
    clipped = opt_ours.grad_scale is not None  # type: ignore[attr-defined]
    assert clipped == (max_norm == 1e-3)
    opt_ours.step()
    opt_theirs.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            opt_ours.state[a]["exp_avg_sq"], opt_theirs.state[b]["exp_avg_sq"]
        )
    assert grad_norm([torch.zeros(2, requires_grad=True)]).item() == 0.0  # no gradients


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_a_cpu_without_bf16_arithmetic_warns(
    has_bf16, monkeypatch, make_model, tokenizer, texts, tmp_path
):
    import warnings

    import prefloop.train.loop as loop

    monkeypatch.setattr(loop, "cpu_computes_bf16", lambda: has_bf16)
    task = LanguageModelingTask(_rows(tokenizer, texts), [], 16, 1, tokenizer.pad_token_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(make_model("gpt2"), task, _cfg(bf16=True), tmp_path, progress=False)
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert len(emulated) == (0 if has_bf16 else 1)
