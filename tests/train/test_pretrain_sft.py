"""Pretraining and SFT on the embedded task, and registry checkpoints that plain HF reloads."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefloop.data.sft import encode_sft, load_sft_rows
from prefloop.models.lm import load_model_and_tokenizer
from prefloop.train.pretrain import PretrainConfig, pretrain
from prefloop.train.sft import SFTConfig, sft
from prefloop.workspace import Workspace


def test_pretrain_beats_unigram_entropy_then_sft_and_plain_hf_reload(tmp_path):
    ws = Workspace.init(tmp_path)
    cfg = PretrainConfig(
        embedded_docs=1500,
        vocab_size=512,
        context=48,
        batch_size=16,
        max_steps=120,
        checkpoint_every=0,
        lr=3e-3,
    )
    version, _ = pretrain(ws, cfg, progress=False)
    m = version.meta["metrics"]
    # the corpus is a grammar: a model that learns anything at all beats the unigram entropy by far
    assert m["loss/eval"] < 0.6 * m["unigram_entropy"], m
    assert version.meta["stage"] == "pretrain" and (version.path / "model.safetensors").exists()

    sft_version, _ = sft(
        ws, SFTConfig(embedded_examples=300, max_steps=10, checkpoint_every=0), progress=False
    )
    assert sft_version.meta["parent"] == version.name

    ours, tok = load_model_and_tokenizer(str(sft_version.path))
    plain = AutoModelForCausalLM.from_pretrained(sft_version.path).eval()
    plain_tok = AutoTokenizer.from_pretrained(sft_version.path)
    text = "Review of the Zephyr blender: I used it for a week and"
    assert plain_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert plain_tok.pad_token_id != plain_tok.eos_token_id
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, plain(ids).logits)


def test_sft_labels_cover_the_response_only(tokenizer):
    rows = encode_sft(
        load_sft_rows([{"prompt": "the movie was", "response": " great"}]), tokenizer, 64
    )
    ids, labels = rows[0]
    prompt_len = len(tokenizer("the movie was", add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in labels[:prompt_len])
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id
