"""The last layer computed at the read tokens only gives the full forward's scores and gradients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
)

from prefloop.models.last_layer import last_layer_at, supported
from prefloop.models.lm import pad_rows
from prefloop.models.reward import last_token_index, reward_forward

VOCAB, PAD = 50, 0


def _model(family: str) -> torch.nn.Module:
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, num_labels=1)
    if family == "gpt2":
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **common,
        )  # fmt: skip
    else:  # grouped-query attention: 4 query heads share 2 key/value heads
        cls = LlamaConfig if family == "llama" else Qwen2Config
        config = cls(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, **common,
        )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def _full_forward(model, ids, mask) -> torch.Tensor:
    """Scores from the plain backbone, every layer at every position."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions)
    last = hidden.last_hidden_state[torch.arange(ids.shape[0]), last_token_index(mask)]
    return model.score(last).squeeze(-1)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_scores_and_gradients_equal_the_full_forward(family, side) -> None:
    model = _model(family).train()
    assert supported(model.base_model)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (7, 3, 12, 1, 9)]
    ids, mask = pad_rows(rows, PAD, side)
    weights = torch.arange(1.0, len(rows) + 1)

    def run(fn):
        model.zero_grad()
        r = fn(model, ids, mask)
        (r * weights).sum().backward()
        return r.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast, fast_grads = run(reward_forward)
    full, full_grads = run(_full_forward)
    assert torch.allclose(fast, full, atol=1e-5)
    for name, grad in full_grads.items():
        assert torch.allclose(fast_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_training_attends_through_the_math_route(family, monkeypatch) -> None:
    """Under CPU bf16 training the last layer's one-query attention runs as bf16 matmuls around
    a float32 softmax (SDPA's bf16 backward is slow): scores and gradients as the full forward's
    under autocast, up to bf16 rounding."""
    from prefloop.models import attention

    calls = []
    math = attention.bf16_math_attention
    monkeypatch.setattr(
        attention,
        "bf16_math_attention",
        lambda *a, **k: calls.append(a[1].shape[2]) or math(*a, **k),
    )
    model = _model(family).train()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (7, 3, 12, 9)]
    ids, mask = pad_rows(rows, PAD, "right")

    def run(fn):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = fn(model, ids, mask)
        (r * torch.arange(1.0, len(rows) + 1)).sum().backward()
        return r.detach().float(), [p.grad.clone() for p in model.parameters()]

    fast, fast_grads = run(reward_forward)
    assert 1 in calls  # the read positions' one-query attention took the math route
    full, full_grads = run(_full_forward)
    assert torch.allclose(fast, full, atol=2e-2, rtol=2e-2)
    for a, b in zip(fast_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=3e-2 * float(b.abs().max()) + 1e-6)


def test_unsupported_backbones_run_unchanged() -> None:
    model = _model("gpt2")
    model.base_model.gradient_checkpointing = True  # the stand-in layer does not checkpoint
    layer = model.base_model.h[-1]
    one_row = (torch.tensor([0]), (torch.tensor([[0]]), torch.tensor([[True]])))
    with last_layer_at(model.base_model, *one_row) as active:
        assert active is False and model.base_model.h[-1] is layer
    model.base_model.gradient_checkpointing = False
    model.config.attn_pdrop = 0.1  # attention dropout is not reproduced either
    assert not supported(model.base_model)
    model.config.attn_pdrop = 0.0
    attn = model.base_model.h[-1].attn
    plain = attn.c_attn
    attn.c_attn = torch.nn.Sequential(plain)  # stands for an adapter-wrapped projection
    assert not supported(model.base_model)
    attn.c_attn = plain
    assert supported(model.base_model)
    with last_layer_at(model.base_model, *one_row) as active:
        assert active is True and model.base_model.h[-1] is not layer
    assert model.base_model.h[-1] is layer  # restored on exit


def test_threads_scoring_with_one_model_get_their_own_scores() -> None:
    """`prefloop serve-reward` scores requests in a threadpool with one model: the stand-in
    layer of one request must never serve another's forward pass."""
    model = _model("gpt2").eval()
    g = torch.Generator().manual_seed(2)
    batches = []
    for b in range(8):
        lengths = torch.randint(1, 20, (b % 4 + 1,), generator=g).tolist()
        rows = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]
        batches.append(pad_rows(rows, PAD, "right" if b % 2 else "left"))
    with torch.no_grad():
        expected = [reward_forward(model, ids, mask) for ids, mask in batches]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(5):
                got = list(pool.map(lambda batch: reward_forward(model, *batch), batches))
                for scores, want in zip(got, expected, strict=True):
                    assert torch.allclose(scores, want, atol=1e-5)
