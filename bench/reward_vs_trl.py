"""Reward-model training throughput: prefloop vs TRL's RewardTrainer (latest TRL).

    .venv/bin/python bench/reward_vs_trl.py            # both sizes, sides alternated
    .venv/bin/python bench/reward_vs_trl.py --side prefloop --size tiny   # one side only

Same initial sequence-classifier weights (bench/common.py), same preference pairs, 16 pairs per
step, max_length 64, float32 on CPU. prefloop: RewardTask (Bradley-Terry) on its training loop.
TRL runs twice per round, with RewardConfig's defaults (bf16 + gradient checkpointing) and with
both off; the faster of the two is the comparison. Each side runs in its own process, in the
order prefloop, TRL plain, TRL defaults, repeated. Step time = wall clock between step ends.
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


def run_prefloop(size: str, steps: int, warmup: int) -> dict[str, Any]:
    from prefloop.models.reward import load_reward_model
    from prefloop.train.loop import LoopConfig, train
    from prefloop.train.reward import PairRecord, RewardTask, encode_records

    setup = common.prepare(size)
    model, tok = load_reward_model(str(setup.reward))
    total = warmup + steps
    rows = common.json.loads(setup.pairs.read_text())[: BATCH * total]
    records = [PairRecord(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    pairs = encode_records(records, tok, MAX_LENGTH)
    task = RewardTask(pairs, batch_size=BATCH, grad_accum=1, seed=common.SEED)
    clock = common.StepClock(warmup)
    cfg = LoopConfig(max_steps=total, lr=1e-4, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as run_dir:
        clock.start()
        train(model, common.TimedTask(task, clock), cfg, Path(run_dir), progress=False)
    st = common.stats(clock.steps())
    return {
        "side": "prefloop",
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


def compare(
    size: str, repeats: int, steps: int, warmup: int, defaults_rounds: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"prefloop": [], "trl-plain": [], "trl-defaults": []}
    n = ["--steps", str(steps), "--warmup", str(warmup), "--size", size]
    for i in range(repeats):
        runs["prefloop"].append(
            common.run_side([sys.executable, __file__, "--side", "prefloop", *n])
        )
        for mode in ("plain", "defaults"):
            if mode == "defaults" and i >= defaults_rounds:
                continue  # bf16 + checkpointing is many times slower on CPU: fewer rounds
            cmd = [sys.executable, PEER, "--mode", mode, *n]
            runs[f"trl-{mode}"].append(common.run_side(cmd))
    plain = common.side_summary(runs["trl-plain"])
    defaults = common.side_summary(runs["trl-defaults"]) if runs["trl-defaults"] else None
    slower = defaults is None or plain["step"]["median_s"] <= defaults["step"]["median_s"]
    faster = "trl-plain" if slower else "trl-defaults"
    summary = common.pair_summary(runs, "prefloop", faster)
    return {
        "runs": runs,
        "trl_compared": faster,
        "trl_plain": plain,
        "trl_defaults": defaults,
        "peer": "trl",
        "peer_version": runs[faster][0]["peer_version"],
        **summary,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["prefloop"])
    ap.add_argument("--size", choices=sorted(common.SIZES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--defaults-rounds", type=int, default=99, help="rounds that also run TRL's defaults"
    )
    args = ap.parse_args()
    common.apply_threads()
    if args.side:
        common.emit(run_prefloop(args.size or "tiny", args.steps, args.warmup))
        return
    out: dict[str, Any] = {"target": "prefloop >= 2x TRL throughput, no more peak RSS"}
    print(
        "| size | prefloop step ms (pairs/s) | TRL plain step ms | TRL defaults step ms | "
        "speedup vs faster TRL | prefloop RSS MB | TRL RSS MB |\n|---|---|---|---|---|---|---|"
    )
    for size in [args.size] if args.size else ["tiny", "20m"]:
        r = compare(size, args.repeats, args.steps, args.warmup, args.defaults_rounds)
        out[size] = r
        a, p, d = r["a"], r["trl_plain"], r["trl_defaults"]
        d_ms = f"{d['step']['median_s'] * 1e3:.1f}" if d else "not run"
        print(
            f"| {size} | {a['step']['median_s'] * 1e3:.1f} ({BATCH / a['step']['median_s']:.0f}) | "
            f"{p['step']['median_s'] * 1e3:.1f} | {d_ms} | "
            f"{r['speedup']:.2f}x vs {r['trl_compared']} | {a['peak_rss_mb']:.0f} | "
            f"{r['b']['peak_rss_mb']:.0f} |",
            flush=True,
        )
    print(f"wrote {common.write_json('reward_vs_trl.json', out)}")


if __name__ == "__main__":
    main()
