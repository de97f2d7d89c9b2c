"""Pair generation: sample k responses per prompt, keep the distinct ones, and store every pair
among them as a comparison waiting for labels (with the model version and sampling settings).

Prompts are formatted exactly as SFT formatted them (`prefloop.data.sft.encode_prompt`: plain
text as is, conversations through the chat template) and sampled with THE sampler (nucleus
sampling by default). Model output is untrusted: it is stored as text and never interpreted.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefloop.config import option
from prefloop.data.rows import read_rows
from prefloop.errors import PrefloopError
from prefloop.feedback.formats import Message, parse_messages, render
from prefloop.feedback.models import ComparisonIn, PromptIn, ResponseIn
from prefloop.feedback.store import PreferenceStore


@dataclass
class PairsConfig:
    model: str = option(
        "latest:sft",
        "model that writes the responses: version, production, latest:<stage>, folder or hub id",
    )
    prompts: str = option(
        "",
        "prompt file or dataset: rows with 'prompt' (text or messages) "
        "or 'messages' (a conversation ending with a user turn)",
    )
    default_prompts: int = option(0, "use N prompts of the embedded review task instead")
    k: int = option(2, "responses sampled per prompt (all distinct pairs become comparisons)")
    max_new_tokens: int = option(48, "maximum tokens per response")
    temperature: float = option(1.0, "softmax temperature")
    top_p: float = option(0.9, "nucleus sampling mass")
    top_k: int = option(0, "keep only the k most likely tokens (0 = off)")
    batch_size: int = option(64, "sequences generated together")
    seed: int = option(0, "seed for prompts (default set) and sampling")
    source: str = option("pairs", "source tag stored on each comparison")
    required_labels: int = option(1, "labels each comparison needs (annotation overlap)")
    trust_remote_code: bool = option(False, "allow custom model code from the hub")


@dataclass(frozen=True)
class PromptItem:
    text: str  # plain prompt, or the rendering of `messages`
    messages: list[Message] | None = None


@dataclass(frozen=True)
class PairsSummary:
    prompts: int
    responses: int
    comparisons: int
    dropped_identical: int
    dropped_empty: int
    prompts_without_pair: int
    model_version: str


def load_prompts(source: str | os.PathLike[str]) -> list[PromptItem]:
    """Prompts from a file/dataset: 'prompt' (text or a message list) or 'messages' per row."""
    name = str(source)
    out = []
    for row_no, row in read_rows(source):
        value = row.get("prompt", row.get("messages", row.get("text")))
        field = "prompt" if "prompt" in row else "messages" if "messages" in row else "text"
        if isinstance(value, str):
            if not value.strip():
                raise PrefloopError("empty prompt", file=name, row=row_no, field=field)
            out.append(PromptItem(value))
        elif isinstance(value, list):
            msgs = parse_messages(value, name, row_no, field)
            if msgs[-1]["role"] != "user":
                raise PrefloopError(
                    "a conversation prompt must end with a user turn",
                    file=name,
                    row=row_no,
                    field=field,
                )
            out.append(PromptItem(render(msgs), msgs))
        else:
            raise PrefloopError(
                "missing field (expected 'prompt' or 'messages')",
                file=name,
                row=row_no,
                field="prompt",
            )
    if not out:
        raise PrefloopError("no prompts", file=name)
    return out


def sample_responses(
    model: Any, tokenizer: Any, prompts: Sequence[PromptItem], cfg: PairsConfig
) -> list[list[str]]:
    """k responses per prompt (decoded, special tokens removed), prompt-major."""
    import torch

    from prefloop.data.sft import encode_prompt
    from prefloop.models.lm import context_length
    from prefloop.models.sampler import Sampler, SamplingParams

    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        n=cfg.k,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    room = context_length(model) - cfg.max_new_tokens
    if room < 1:
        raise PrefloopError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for the prompt")
    sampler = Sampler(model, tokenizer)
    rows: list[list[int]] = []
    for p in prompts:
        ids = encode_prompt(tokenizer, p.messages or p.text, max_prompt_tokens=room)
        rows += [ids or [sampler.eos_id]] * cfg.k
    gen = torch.Generator().manual_seed(cfg.seed)
    response_ids: list[list[int]] = []
    for start in range(0, len(rows), cfg.batch_size):
        response_ids += sampler.generate_ids(
            rows[start : start + cfg.batch_size], params, gen
        ).response_ids
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return [texts[i * cfg.k : (i + 1) * cfg.k] for i in range(len(prompts))]


def store_pairs(
    store: PreferenceStore,
    prompts: Sequence[PromptItem],
    responses: Sequence[Sequence[str]],
    *,
    model_version: str,
    sampling: dict[str, object],
    source: str = "pairs",
    required_labels: int = 1,
) -> PairsSummary:
    """Store prompts, their distinct non-empty responses and all pairs among them (one
    transaction). Identical responses would make a comparison with no answer; dropped."""
    dropped_identical = dropped_empty = no_pair = 0
    kept: list[list[str]] = []
    for texts in responses:
        distinct = list(dict.fromkeys(t for t in texts if t.strip()))
        dropped_empty += sum(1 for t in texts if not t.strip())
        dropped_identical += sum(1 for t in texts if t.strip()) - len(distinct)
        no_pair += len(distinct) < 2
        kept.append(distinct)
    n_resp = n_cmp = 0
    with store.transaction() as tx:
        pids = tx.add_prompts([PromptIn(p.text, p.messages, source) for p in prompts])
        for pid, texts in zip(pids, kept, strict=True):
            if len(texts) < 2:
                continue
            rids = tx.add_responses([ResponseIn(pid, t, model_version, sampling) for t in texts])
            cmps = [
                ComparisonIn(pid, a, b, source, required_labels)
                for a, b in itertools.combinations(rids, 2)
            ]
            tx.add_comparisons(cmps)
            n_resp += len(rids)
            n_cmp += len(cmps)
    return PairsSummary(
        len(prompts), n_resp, n_cmp, dropped_identical, dropped_empty, no_pair, model_version
    )


def generate_pairs(
    store: PreferenceStore, cfg: PairsConfig, model_path: str, version: str
) -> PairsSummary:
    """Load prompts and the model, sample, and store the pairs (see module docstring)."""
    if cfg.k < 2:
        raise PrefloopError("k must be at least 2 (a comparison needs two responses)", field="k")
    if cfg.required_labels < 1:
        raise PrefloopError("required_labels must be at least 1", field="required_labels")
    if bool(cfg.prompts) == (cfg.default_prompts > 0):
        raise PrefloopError("give either --prompts SOURCE or --default-prompts N")
    if cfg.prompts:
        prompts = load_prompts(cfg.prompts)
    else:
        from prefloop.data.reviews import rl_prompts

        prompts = [PromptItem(p) for p in rl_prompts(cfg.default_prompts, cfg.seed)]
    from prefloop.models.lm import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    responses = sample_responses(model, tokenizer, prompts, cfg)
    sampling = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k in ("k", "max_new_tokens", "temperature", "top_p", "top_k", "seed")
    }
    return store_pairs(
        store,
        prompts,
        responses,
        model_version=version,
        sampling=sampling,
        source=cfg.source,
        required_labels=cfg.required_labels,
    )
