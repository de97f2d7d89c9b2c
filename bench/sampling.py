"""Sampling throughput: prefloop's Sampler vs transformers' `model.generate`, same model/settings.

    .venv/bin/python bench/sampling.py                 # both sizes, sides alternated A B A B
    .venv/bin/python bench/sampling.py --side prefloop --size tiny   # one side, one process

Same bench GPT-2 weights, same prompts (left-padded batch), same batch size, max_new_tokens,
temperature, top-p (top-k off on both sides: transformers' default top_k=50 is turned off), stop
at EOS, KV cache on both. One timed unit = generating one batch; tokens/s counts generated tokens
(up to and including EOS) over the median batch time. Warmup batches are excluded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

SETTINGS = {"batch": 32, "max_new_tokens": 48, "temperature": 1.0, "top_p": 0.9}
SIDES = ("prefloop", "transformers")


def _prefloop(setup: common.Setup, texts: list[str]) -> Any:
    from prefloop.models.lm import load_model, load_tokenizer
    from prefloop.models.sampler import Sampler, SamplingParams

    sampler = Sampler(load_model(str(setup.policy)), load_tokenizer(str(setup.tokenizer)))
    params = SamplingParams(
        max_new_tokens=SETTINGS["max_new_tokens"],
        top_k=0,
        temperature=SETTINGS["temperature"],
        top_p=SETTINGS["top_p"],
        n=1,
        batch_size=SETTINGS["batch"],
    )

    def one_batch() -> int:
        gen = sampler.generate(texts, params)
        return sum(len(r) for r in gen.response_ids)

    return one_batch


def _transformers(setup: common.Setup, texts: list[str]) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup.tokenizer, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(setup.policy, dtype=torch.float32).eval()

    @torch.no_grad()
    def one_batch() -> int:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            do_sample=True,
            max_new_tokens=SETTINGS["max_new_tokens"],
            temperature=SETTINGS["temperature"],
            top_p=SETTINGS["top_p"],
            top_k=0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return int((out[:, enc["input_ids"].shape[1] :] != tok.pad_token_id).sum())

    return one_batch


def run_side(side: str, size: str, batches: int, warmup: int) -> dict[str, Any]:
    setup = common.prepare(size)
    texts = common.json.loads(setup.prompts.read_text())[: SETTINGS["batch"]]
    torch.manual_seed(common.SEED)
    one_batch = (_prefloop if side == "prefloop" else _transformers)(setup, texts)
    clock = common.StepClock(warmup)
    tokens = []
    clock.start()
    for _ in range(warmup + batches):
        tokens.append(one_batch())
        clock.tick()
    st = common.stats(clock.steps())
    timed_tokens = tokens[warmup:]
    mean_tokens = sum(timed_tokens) / len(timed_tokens)
    return {
        "side": side,
        "size": size,
        **SETTINGS,
        "step": st,
        "step_seconds": clock.steps(),
        "tokens_per_batch": mean_tokens,
        "tokens_per_s": mean_tokens / st["median_s"],
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=SIDES)
    ap.add_argument("--size", choices=sorted(common.SIZES))
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="A B rounds per size")
    args = ap.parse_args()
    common.apply_threads()
    if args.side:
        common.emit(run_side(args.side, args.size or "tiny", args.batches, args.warmup))
        return
    out: dict[str, Any] = {"target": "prefloop >= 1.5x transformers generate", "settings": SETTINGS}
    rows = []
    for size in [args.size] if args.size else ["tiny", "20m"]:
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
        for _ in range(args.repeats):
            for side in SIDES:
                cmd = [
                    sys.executable,
                    __file__,
                    "--side",
                    side,
                    "--size",
                    size,
                    "--batches",
                    str(args.batches),
                    "--warmup",
                    str(args.warmup),
                ]
                runs[side].append(common.run_side(cmd))
        summary = common.pair_summary(runs, "prefloop", "transformers", "tokens_per_batch")
        out[size] = {"runs": runs, **summary}
        rows.append((size, summary))
    print(
        "| size | prefloop tokens/s | transformers tokens/s | speedup | prefloop RSS MB "
        "| transformers RSS MB |\n|---|---|---|---|---|---|"
    )
    for size, s in rows:
        print(
            f"| {size} | {s['a']['per_s']:.0f} | {s['b']['per_s']:.0f} | "
            f"{s['speedup']:.2f}x | {s['a']['peak_rss_mb']:.0f} | {s['b']['peak_rss_mb']:.0f} |"
        )
    print(f"wrote {common.write_json('sampling.json', out)}")


if __name__ == "__main__":
    main()
