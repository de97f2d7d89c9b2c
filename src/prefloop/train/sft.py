"""`prefloop sft`: supervised fine-tuning on prompt/response or `messages` data.

Same loop and task as pretraining; only the rows differ: labels are -100 on prompt tokens, so
the loss covers response (assistant) tokens only.
"""

from __future__ import annotations

from dataclasses import asdict

from prefloop.configs import SFTConfig
from prefloop.data import reviews
from prefloop.data.sft import encode_sft, load_sft, load_sft_rows
from prefloop.errors import PrefloopError
from prefloop.models.lm import context_length, load_model_and_tokenizer
from prefloop.train.lm import LanguageModelingTask
from prefloop.train.loop import TrainResult, train
from prefloop.workspace import ModelVersion, Workspace


def sft(ws: Workspace, cfg: SFTConfig, progress: bool = True) -> tuple[ModelVersion, TrainResult]:
    if cfg.truncation not in ("left", "error"):
        raise PrefloopError("truncation must be 'left' or 'error'", field="truncation")
    model_path = ws.resolve(cfg.model)
    run_dir = ws.run_dir("sft", cfg.resume)
    examples = (
        load_sft(cfg.data)
        if cfg.data
        else load_sft_rows(reviews.sft_examples(cfg.embedded_examples, cfg.seed))
    )
    model, tokenizer = load_model_and_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    max_length = cfg.max_length or context_length(model)
    rows = encode_sft(examples, tokenizer, max_length, truncation=cfg.truncation)
    n_eval = max(1, int(len(rows) * cfg.eval_fraction)) if len(rows) > 1 else 0
    task = LanguageModelingTask(
        rows[n_eval:],
        rows[:n_eval],
        cfg.batch_size,
        cfg.grad_accum,
        int(tokenizer.pad_token_id),
        cfg.seed,
    )
    result = train(model, task, cfg, run_dir, resume=cfg.resume, desc="sft", progress=progress)
    metrics = {
        **result.eval,
        "train_loss": result.final.get("loss/train"),
        "examples": len(rows),
        "seconds": result.seconds,
    }
    version = ws.save_model(
        model,
        tokenizer,
        "sft",
        parent=ws.version_of(model_path) or cfg.model,
        data=cfg.data or "embedded:reviews",
        metrics=metrics,
        config=asdict(cfg),
    )
    (run_dir / "DONE").write_text(version.name)
    return version, result
