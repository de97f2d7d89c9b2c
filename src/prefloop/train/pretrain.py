"""`prefloop pretrain`: a causal LM from scratch (or continued) on a text corpus, packed into blocks."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefloop.configs import PretrainConfig
from prefloop.data import reviews
from prefloop.data.corpus import load_corpus, pack
from prefloop.errors import PrefloopError
from prefloop.models.lm import (
    SIZES,
    build_model,
    count_parameters,
    load_model_and_tokenizer,
    load_tokenizer,
)
from prefloop.models.tokenizer import train_bpe_tokenizer
from prefloop.train.lm import LanguageModelingTask, unigram_entropy
from prefloop.train.loop import TrainResult, train
from prefloop.workspace import ModelVersion, Workspace


def _texts(cfg: PretrainConfig) -> list[str]:
    if cfg.data:
        return load_corpus(cfg.data, text_field=cfg.text_field)
    return reviews.corpus(cfg.embedded_docs, seed=cfg.seed)


def pretrain(
    ws: Workspace, cfg: PretrainConfig, progress: bool = True
) -> tuple[ModelVersion, TrainResult]:
    if cfg.size not in SIZES:
        raise PrefloopError(
            f"unknown size '{cfg.size}' (choose from {', '.join(SIZES)})", field="size"
        )
    run_dir = ws.run_dir("pretrain", cfg.resume)
    texts = _texts(cfg)
    tok_dir = run_dir / "tokenizer"
    if tok_dir.exists():  # resumed run: reuse the exact tokenizer
        tokenizer = load_tokenizer(str(tok_dir))
    elif cfg.model:
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    elif cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
    else:
        tokenizer = train_bpe_tokenizer(texts, vocab_size=cfg.vocab_size)
    tokenizer.save_pretrained(tok_dir)

    if cfg.model:
        model, tokenizer = load_model_and_tokenizer(
            cfg.model, trust_remote_code=cfg.trust_remote_code
        )
    else:
        n_layer, n_embd, n_head = SIZES[cfg.size]
        model = build_model(
            cfg.family,
            tokenizer,
            seed=cfg.seed,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            context=cfg.context,
        )
    eos = int(tokenizer.eos_token_id)
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = pack(token_lists, cfg.context - 1, eos)  # (N, context)
    if len(blocks) < 2:
        raise PrefloopError(
            f"corpus too small: {sum(map(len, token_lists))} tokens give {len(blocks)} blocks"
        )
    rows = [(b, b) for b in blocks.tolist()]
    n_eval = max(1, int(len(rows) * cfg.eval_fraction))
    task = LanguageModelingTask(
        rows[n_eval:],
        rows[:n_eval],
        cfg.batch_size,
        cfg.grad_accum,
        int(tokenizer.pad_token_id),
        cfg.seed,
    )
    result = train(model, task, cfg, run_dir, resume=cfg.resume, desc="pretrain", progress=progress)
    metrics: dict[str, Any] = {
        **result.eval,
        "train_loss": result.final.get("loss/train"),
        "unigram_entropy": unigram_entropy(rows[:n_eval]),
        "parameters": count_parameters(model),
        "tokens_seen": cfg.max_steps * cfg.batch_size * cfg.grad_accum * (cfg.context - 1),
        "seconds": result.seconds,
    }
    version = ws.save_model(
        model,
        tokenizer,
        "pretrain",
        parent=cfg.model or None,
        data=cfg.data or "embedded:reviews",
        metrics=metrics,
        config=asdict(cfg),
    )
    (run_dir / "DONE").write_text(version.name)
    return version, result
