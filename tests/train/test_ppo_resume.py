"""`run_ppo` end to end in a workspace: reward-model source, value initialized from it, registry
version, and resume after a crash reaching the same final weights as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefloop.errors import PrefloopError
from prefloop.train import ppo as ppo_module
from prefloop.train.ppo import PpoConfig, run_ppo
from prefloop.workspace import Workspace


@pytest.fixture
def workspace(tmp_path: Path, make_model, tokenizer) -> Workspace:
    """A workspace holding a tiny 'sft' policy and a 'reward' model built from it."""
    from prefloop.models.reward import build_reward_model

    ws = Workspace.init(tmp_path / "ws")
    sft = ws.save_model(make_model("gpt2"), tokenizer, "sft")
    rm = build_reward_model(sft.path, tokenizer, seed=0)
    ws.save_model(rm, tokenizer, "reward", parent=sft.name)
    (tmp_path / "prompts.txt").write_text("".join(f"the movie {i} was\n" for i in range(32)))
    return ws


def cfg_for(ws: Workspace, **kw) -> PpoConfig:
    base = dict(
        prompts=str(ws.root.parent / "prompts.txt"),
        rollouts=3,
        batch_size=8,
        max_new_tokens=8,
        ppo_epochs=2,
        num_minibatches=2,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=1,
        deterministic=True,
        gold="python:prefloop.feedback.gold.sentiment_gold",
    )
    return PpoConfig(**{**base, **kw})


def weights(version) -> dict[str, torch.Tensor]:
    return load_file(str(version.path / "model.safetensors"))


def test_run_ppo_registers_version_with_history(workspace: Workspace) -> None:
    v = run_ppo(workspace, cfg_for(workspace, rollouts=2), progress=False)
    assert v.stage == "ppo" and v.meta["parent"] == "sft-v1"
    assert v.meta["value_init"] == "reward"
    for key in ("score", "gold", "kl_k1", "eos_rate", "step_seconds"):
        assert isinstance(v.meta["metrics"][key], float), key
    run = Path(v.meta["run_dir"])
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 * 2 * 2
    assert {"charts/score", "charts/gold", "loss/value", "charts/clipfrac"} <= set(history[-1])
    assert (run / "DONE").read_text() == v.name
    assert len(json.loads((run / "samples.json").read_text())) == 2  # first and last rollout


@pytest.mark.parametrize("lora_r", [0, 4])  # full fine-tuning, and LoRA adapters
def test_resume_after_crash_matches_uninterrupted(
    workspace: Workspace, tmp_path: Path, make_model, tokenizer, monkeypatch, lora_r: int
) -> None:
    full = run_ppo(workspace, cfg_for(workspace, lora_r=lora_r), progress=False)

    real = ppo_module.make_experience
    calls = {"n": 0}

    def crash_on_third_rollout(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for SIGKILL: no cleanup code runs after it
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "make_experience", crash_on_third_rollout)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(workspace, cfg_for(workspace, lora_r=lora_r), progress=False)
    monkeypatch.setattr(ppo_module, "make_experience", real)
    resumed = run_ppo(workspace, cfg_for(workspace, resume=True, lora_r=lora_r), progress=False)

    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    sft = load_file(str(workspace.get("sft-v1").path / "model.safetensors"))
    assert any(not torch.equal(a[k], sft[k]) for k in a)  # and PPO did change the policy


def test_value_from_reward_needs_same_tokenizer(workspace: Workspace) -> None:
    cfg = cfg_for(
        workspace, reward=["python:prefloop.feedback.gold.sentiment_gold"], value_init="reward"
    )
    with pytest.raises(PrefloopError, match="value_init=reward"):
        run_ppo(workspace, cfg, progress=False)


def test_bad_prompt_file_names_row(workspace: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    with pytest.raises(PrefloopError, match="row 2"):
        run_ppo(workspace, cfg_for(workspace, prompts=str(bad)), progress=False)


def test_reward_model_with_another_tokenizer(workspace: Workspace, texts, tmp_path: Path) -> None:
    """The reward model re-tokenizes the text; the value network then starts from the policy."""
    from prefloop.models.lm import build_model, save_pretrained
    from prefloop.models.reward import build_reward_model
    from prefloop.models.tokenizer import train_bpe_tokenizer

    other_tok = train_bpe_tokenizer(texts[::-1], vocab_size=300)
    base = save_pretrained(
        build_model("llama", other_tok, n_layer=1, n_embd=32, n_head=2, context=64),
        other_tok,
        tmp_path / "other-base",
    )
    rm = workspace.save_model(build_reward_model(base, other_tok), other_tok, "reward")
    v = run_ppo(
        workspace, cfg_for(workspace, reward=[rm.name], rollouts=1, gold=""), progress=False
    )
    assert v.meta["value_init"] == "policy"
    assert v.meta["reward_versions"] == [rm.name]
    assert "score" in v.meta["metrics"]


def test_lora_policy_uses_the_base_with_adapters_off_as_reference(
    workspace: Workspace, tokenizer
) -> None:
    """With --lora-r the reference is the policy's own base (adapters disabled): it gives the SFT
    model's logits, and only adapter weights train, so the base (the reference) cannot drift; the
    saved version is a plain, merged HF model that differs from the SFT weights."""
    from prefloop.models.lm import load_model
    from prefloop.models.sampler import response_logits
    from prefloop.train.ppo import with_lora

    sft = load_model(str(workspace.get("sft-v1").path))
    policy, ref = with_lora(
        load_model(str(workspace.get("sft-v1").path)), cfg_for(workspace, lora_r=4)
    )
    ids = torch.tensor([tokenizer("the movie was good and fun")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = response_logits(sft, ids, mask, 4)
    assert torch.allclose(response_logits(ref, ids, mask, 4), expected, atol=1e-6)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    v = run_ppo(workspace, cfg_for(workspace, rollouts=2, lora_r=4, lr=1e-2), progress=False)
    merged = load_model(str(v.path))  # plain AutoModelForCausalLM: no adapter files needed
    assert {k for k in weights(v)} == {k for k in weights(workspace.get("sft-v1"))}
    with torch.no_grad():
        assert not torch.allclose(response_logits(merged, ids, mask, 4), expected, atol=1e-4)
