"""Reward-model training throughput: prefloop vs TRL's RewardTrainer (latest TRL).

    .venv/bin/python bench/reward_vs_trl.py            # both sizes, sides alternated
    .venv/bin/python bench/reward_vs_trl.py --side prefloop --size tiny   # one side only

Same initial sequence-classifier weights (bench/common.py), same preference pairs, 16 pairs per
step, max_length 64, on CPU. prefloop: RewardTask (Bradley-Terry) on its training loop, in
float32 and with `bf16=True` (autocast; bf16 matmul weights, float32 masters in AdamW). TRL in its settings:
plain (float32), bf16 (autocast, no gradient checkpointing), RewardConfig's defaults (bf16 +
gradient checkpointing), compile (bf16 + torch_compile) and compile-fp32 (float32 +
torch_compile). Reported: float32 vs TRL's faster float32 setting, bf16 vs its fastest bf16, and
prefloop's faster setting vs TRL's fastest (benchmarking.md: compare against the peer's faster
setting). Each side runs in its own process, all of them alternated per round. Step time = wall
clock between step ends.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

BATCH = 16
MAX_LENGTH = 64
PEER = str(Path(__file__).resolve().parent / "peers" / "trl_reward.py")


def run_prefloop(size: str, steps: int, warmup: int, bf16: bool = False) -> dict[str, Any]:
    from prefloop.models.lm import takes_4d_mask
    from prefloop.models.packing import line_multiple
    from prefloop.models.reward import load_reward_model
    from prefloop.train.loop import LoopConfig, train
    from prefloop.train.reward import (
        PairRecord,
        RewardConfig,
        RewardTask,
        encode_records,
    )

    setup = common.prepare(size)
    model, tok = load_reward_model(str(setup.reward))
    total = warmup + steps
    rows = common.json.loads(setup.pairs.read_text())[: BATCH * total]
    records = [PairRecord(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    pairs = encode_records(records, tok, MAX_LENGTH)
    # the default: packed rows, in lines as `prefloop reward [--bf16]` makes them
    pack = RewardConfig().pack_width if takes_4d_mask(model) else 0
    task = RewardTask(
        pairs,
        BATCH,
        grad_accum=1,
        seed=common.SEED,
        pack_width=pack,
        pad_id=tok.pad_token_id,
        width_multiple=line_multiple(pack, bf16),  # as `prefloop reward --bf16` does
    )
    clock = common.StepClock(warmup)
    cfg = LoopConfig(max_steps=total, lr=1e-4, checkpoint_every=0, bf16=bf16)
    with tempfile.TemporaryDirectory() as run_dir:
        clock.start()
        train(model, common.TimedTask(task, clock), cfg, Path(run_dir), progress=False)
    st = common.stats(clock.steps())
    return {
        "side": "prefloop-bf16" if bf16 else "prefloop",
        "bf16": bf16,
        "size": size,
        "params": common.count_params(model),
        "batch_pairs": BATCH,
        "max_length": MAX_LENGTH,
        "step": st,
        "step_seconds": clock.steps(),
        "pairs_per_s": BATCH / st["median_s"],
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


# TRL's RewardConfig modes: plain (float32), bf16 (autocast, no checkpointing), its defaults
# (bf16 + gradient checkpointing) and compile (bf16 + torch_compile: Inductor over the model; its
# compile time falls in the warmup steps), and compile-fp32 (float32 + torch_compile). On a CPU
# with AVX512-BF16 bf16 can be the faster; without it (--no-bf16) only the float32 modes run.
TRL_FP32_MODES = ("plain", "compile-fp32")
TRL_MODES = ("plain", "bf16", "defaults", "compile", "compile-fp32")


def compare(size: str, repeats: int, steps: int, warmup: int, bf16: bool = True) -> dict[str, Any]:
    """Rounds of prefloop fp32, prefloop bf16, then TRL's modes; like-for-like ratios (fp32 vs
    TRL's faster fp32 mode, bf16 vs its fastest bf16 mode) and the headline: prefloop's faster
    setting vs TRL's fastest."""
    modes = TRL_MODES if bf16 else TRL_FP32_MODES
    sides = ["prefloop", *(["prefloop-bf16"] if bf16 else []), *(f"trl-{m}" for m in modes)]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    n = ["--steps", str(steps), "--warmup", str(warmup), "--size", size]
    for _ in range(repeats):
        runs["prefloop"].append(
            common.run_side([sys.executable, __file__, "--side", "prefloop", *n])
        )
        if bf16:
            runs["prefloop-bf16"].append(
                common.run_side([sys.executable, __file__, "--side", "prefloop", "--bf16", *n])
            )
        for mode in modes:
            runs[f"trl-{mode}"].append(common.run_side([sys.executable, PEER, "--mode", mode, *n]))
    summary = {k: common.side_summary(v) for k, v in runs.items()}

    def fastest(keys: list[str]) -> str:
        return min(keys, key=lambda k: summary[k]["step"]["median_s"])

    trl_fp32 = fastest([f"trl-{m}" for m in TRL_FP32_MODES])
    ours = fastest([k for k in sides if k.startswith("prefloop")])
    theirs = fastest([k for k in sides if k.startswith("trl")])
    out: dict[str, Any] = {
        "runs": runs,
        "sides": summary,
        "peer": "trl",
        "peer_version": runs["trl-plain"][0]["peer_version"],
        "fp32": {"trl_compared": trl_fp32, **common.pair_summary(runs, "prefloop", trl_fp32)},
        "headline": {
            "prefloop": ours,
            "trl_compared": theirs,
            **common.pair_summary(runs, ours, theirs),
        },
    }
    if bf16:
        trl_bf16 = fastest(["trl-bf16", "trl-defaults", "trl-compile"])
        pair = common.pair_summary(runs, "prefloop-bf16", trl_bf16)
        out["bf16"] = {"trl_compared": trl_bf16, **pair}
    return out


def bf16_ratio(r: dict[str, Any]) -> str:
    b = r.get("bf16")
    return f"{b['speedup']:.2f}x vs {b['trl_compared']}" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["prefloop"])
    ap.add_argument("--bf16", action="store_true", help="with --side: bf16 autocast")
    ap.add_argument("--size", choices=sorted(common.SIZES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--no-bf16",
        action="store_true",
        help="float32 only (bf16 is slow on CPUs without AVX512-BF16)",
    )
    ap.add_argument("--out", default="reward_vs_trl.json", help="results file under bench/results/")
    args = ap.parse_args()
    common.apply_threads()
    if args.side:
        common.emit(run_prefloop(args.size or "tiny", args.steps, args.warmup, args.bf16))
        return
    out: dict[str, Any] = {"target": "prefloop >= 2x TRL throughput, no more peak RSS"}
    print(
        "| size | prefloop fp32 / bf16 step ms | TRL plain / bf16 / defaults / compile / "
        "compile-fp32 step ms | "
        "fp32 vs TRL's faster fp32 | bf16 vs TRL's fastest bf16 | best vs best | "
        "RSS MB prefloop / TRL (best) |"
        "\n|---|---|---|---|---|---|---|"
    )
    for size in [args.size] if args.size else ["tiny", "20m"]:
        r = compare(size, args.repeats, args.steps, args.warmup, not args.no_bf16)
        out[size] = r

        def ms(k: str, r: dict[str, Any] = r) -> str:
            return f"{r['sides'][k]['step']['median_s'] * 1e3:.1f}" if k in r["sides"] else "-"

        h = r["headline"]
        print(
            f"| {size} | {ms('prefloop')} / {ms('prefloop-bf16')} | {ms('trl-plain')} / "
            f"{ms('trl-bf16')} / {ms('trl-defaults')} / {ms('trl-compile')} / "
            f"{ms('trl-compile-fp32')} | "
            f"{r['fp32']['speedup']:.2f}x vs {r['fp32']['trl_compared']} | "
            f"{bf16_ratio(r)} | {h['speedup']:.2f}x "
            f"({h['prefloop']} vs {h['trl_compared']}) | {h['a']['peak_rss_mb']:.0f} / "
            f"{h['b']['peak_rss_mb']:.0f} |",
            flush=True,
        )
    print(f"wrote {common.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
