"""`prefloop generate`: sample responses with THE sampler."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.config import option
from prefloop.errors import PrefloopError
from prefloop.models.sampling_params import SamplingParams


@dataclass
class GenerateConfig(SamplingParams):
    model: str = option(
        "latest:sft", "model: version, production, latest:<stage>, folder or hub id"
    )
    prompts: str = option(
        "", "file of prompts (.txt lines, or JSONL/Parquet rows with a 'prompt' field)"
    )
    json: bool = option(
        False, "print one JSON object per sample: prompt, text, token ids, log-probs"
    )
    trust_remote_code: bool = option(False, "allow custom model code from the hub (off by default)")


def _generate(args: argparse.Namespace) -> int:
    quiet_transformers()
    from prefloop.data.rows import read_rows
    from prefloop.models.lm import load_model_and_tokenizer
    from prefloop.models.sampler import Sampler

    ws, cfg = workspace_and_config(args, GenerateConfig)
    prompts = list(args.prompt or [])
    if cfg.prompts:
        for row_no, row in read_rows(cfg.prompts):
            value = row.get("prompt", row.get("text"))
            if not isinstance(value, str):
                raise PrefloopError(
                    "expected a string", file=cfg.prompts, row=row_no, field="prompt"
                )
            prompts.append(value)
    if not prompts:
        raise PrefloopError("no prompts: give PROMPT arguments or --prompts FILE")
    model, tokenizer = load_model_and_tokenizer(
        ws.resolve(cfg.model), trust_remote_code=cfg.trust_remote_code
    )
    params = SamplingParams(**{k: getattr(cfg, k) for k in SamplingParams.__dataclass_fields__})
    gen = Sampler(model, tokenizer).generate(prompts, params)
    for i, text in enumerate(gen.texts):
        if cfg.json:
            print(
                json.dumps(
                    {
                        "prompt": gen.prompts[i],
                        "text": text,
                        "token_ids": gen.response_ids[i],
                        "logprobs": gen.logprobs[i],
                        "finished": gen.finished[i],
                    }
                )
            )
        else:
            print(f"[{i // params.n + 1}.{i % params.n + 1}] {gen.prompts[i]}\u2502{text}")
    sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "generate",
        "sample responses (top-p / top-k / temperature) from a model",
        _generate,
        GenerateConfig,
    )
    p.add_argument("prompt", nargs="*", help="prompt text(s)")
