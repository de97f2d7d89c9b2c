"""prefloop pretraining throughput and model FLOP utilization (MFU) on this machine's CPU.

    .venv/bin/python bench/pretrain_mfu.py            # both sizes, each in its own process
    .venv/bin/python bench/pretrain_mfu.py --size 20m --steps 10

Trains the bench GPT-2 models (tiny ~0.95M, 20m ~21M parameters) with prefloop's training loop
and LanguageModelingTask on packed blocks of 256 tokens, 16 blocks per step. Model FLOPs per
token = 6*N + 12*L*d*T (N = all parameters, the tied embedding counted once = the LM-head matmul;
the second term is the attention score and value matmuls, forward + backward, T = 256, causal
mask not discounted), as in PaLM's appendix B. The ceiling is the float32 2048x2048 torch.matmul
rate on all torch threads, measured in the same process just before and after training (best of
several runs); MFU = achieved model FLOP/s / that ceiling.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

from prefloop.data.corpus import pack
from prefloop.models.lm import load_model, load_tokenizer
from prefloop.train.lm import LanguageModelingTask
from prefloop.train.loop import LoopConfig, train

CONTEXT = 256
BATCH = 16


def matmul_peak_gflops(n: int = 2048, reps: int = 8, trials: int = 5) -> float:
    """Best float32 n x n matmul rate (GFLOP/s) over `trials` runs of `reps` products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the kernels and thread pool
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(n_params: int, n_layer: int, d_model: int, context: int) -> int:
    return 6 * n_params + 12 * n_layer * d_model * context


def run_size(size: str, steps: int, warmup: int) -> dict[str, Any]:
    setup = common.prepare(size)
    tok = load_tokenizer(str(setup.tokenizer))
    model = load_model(str(setup.policy))
    ids = tok(common.corpus(20_000), add_special_tokens=False)["input_ids"]
    blocks = pack(ids, CONTEXT - 1, int(tok.eos_token_id)).tolist()  # rows of CONTEXT tokens
    rows = [(b, b) for b in blocks]
    task = LanguageModelingTask(rows, [], BATCH, 1, int(tok.pad_token_id), seed=0)
    clock = common.StepClock(warmup)
    cfg = LoopConfig(
        max_steps=warmup + steps, lr=1e-3, warmup_steps=2, checkpoint_every=0, log_every=1000
    )
    peak_before = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as run_dir:
        clock.start()
        train(model, common.TimedTask(task, clock), cfg, Path(run_dir), progress=False)
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)
    n_params = common.count_params(model)
    shape = common.SIZES[size]
    fpt = flops_per_token(n_params, shape["n_layer"], shape["n_embd"], CONTEXT)
    step_s = clock.steps()
    st = common.stats(step_s)
    tokens = BATCH * CONTEXT
    achieved = fpt * tokens / st["median_s"] / 1e9
    return {
        "side": "prefloop",
        "size": size,
        "params": n_params,
        "context": CONTEXT,
        "batch": BATCH,
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "flops_formula": "6*N + 12*L*d*T",
        "step": st,
        "step_seconds": step_s,
        "tokens_per_s": tokens / st["median_s"],
        "model_gflops_per_s": achieved,
        "matmul_peak_gflops": peak,
        "matmul_peak_before": peak_before,
        "matmul_peak_after": peak_after,
        "mfu": achieved / peak,
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(common.SIZES), help="one size in this process")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    common.apply_threads()
    if args.size:
        common.emit(run_size(args.size, args.steps, args.warmup))
        return
    results = {}
    for size in ("tiny", "20m"):
        cmd = [
            sys.executable,
            __file__,
            "--size",
            size,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        results[size] = common.run_side(cmd)
    print(
        "| size | params | tokens/s | model GFLOP/s | matmul peak GFLOP/s | MFU | step median "
        "(min-max) s | peak RSS MB |\n|---|---|---|---|---|---|---|---|"
    )
    for size, r in results.items():
        s = r["step"]
        print(
            f"| {size} | {r['params'] / 1e6:.2f}M | {r['tokens_per_s']:.0f} | "
            f"{r['model_gflops_per_s']:.1f} | {r['matmul_peak_gflops']:.1f} | {r['mfu']:.1%} | "
            f"{s['median_s']:.3f} ({s['min_s']:.3f}-{s['max_s']:.3f}) | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    path = common.write_json("pretrain_mfu.json", {"target": "MFU >= 40% at 20m", **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
