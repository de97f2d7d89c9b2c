"""PPO step time: prefloop vs TRL 1.12.0's PPOTrainer (trl.experimental.ppo), same settings.

    .venv/bin/python bench/ppo_vs_trl.py                  # both sizes, sides alternated A B A B
    .venv/bin/python bench/ppo_vs_trl.py --side prefloop --size tiny    # one side only

Both sides: policy and reference from the same causal-LM weights, reward = the same sequence
classifier (num_labels=1), value = a separate copy of the reward model; tiny: 16 prompts, 24
response tokens; 20m: 32 prompts, 48 response tokens; 4 PPO epochs, 1 minibatch, kl_coef 0.05,
temperature 1.0, stop at EOS, no missing-EOS penalty, float32 on CPU (or, with `--bf16`, each
side's bf16 setting: prefloop's `PpoConfig.bf16`, TRL's `PPOConfig(bf16=True)`), dropout off. One step =
one rollout (generate, score, reference log-probs, values, GAE) + 4 epochs of updates; step time
is the wall clock between step ends (TRL: `on_step_end` callback; prefloop: the loop's step end
after the rollout's last minibatch). TRL runs from bench/.venv-trl112 (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

HERE = Path(__file__).resolve().parent
PEER = [str(HERE / ".venv-trl112" / "bin" / "python"), str(HERE / "peers" / "trl_ppo.py")]


def run_prefloop(size: str, steps: int, warmup: int, bf16: bool = False) -> dict[str, Any]:
    from prefloop.models.lm import load_model_and_tokenizer
    from prefloop.train.loop import train
    from prefloop.train.ppo import PpoConfig, PpoTask, build_value_model, dropout_off, frozen
    from prefloop.train.rewards import RewardModelSource
    from prefloop.train.rollout import PolicyAndValue

    setup = common.prepare(size)
    s = common.PPO_SETTINGS[size]
    cfg = PpoConfig(
        policy=str(setup.policy),
        reward=[str(setup.reward)],
        value_init="reward",
        rollouts=warmup + steps,
        batch_size=s["batch"],
        max_new_tokens=s["response_length"],
        temperature=common.TEMPERATURE,
        kl_coef=common.KL_COEF,
        ppo_epochs=common.PPO_EPOCHS,
        num_minibatches=common.PPO_MINIBATCHES,
        penalize_missing_eos=False,
        checkpoint_every=0,
        seed=common.SEED,
        bf16=bf16,
    )
    policy, tok = load_model_and_tokenizer(str(setup.policy))
    ref, _ = load_model_and_tokenizer(str(setup.policy))
    dropout_off(policy)
    reward = RewardModelSource(str(setup.reward), batch_size=s["batch"])
    value, _ = build_value_model(cfg, str(setup.policy), tok, reward)
    nets = PolicyAndValue(policy, value)
    prompts = common.json.loads(setup.prompts.read_text())
    task = PpoTask(nets, frozen(ref), tok, reward, prompts, cfg)
    clock = common.StepClock(warmup)
    with tempfile.TemporaryDirectory() as run_dir:
        clock.start()
        train(
            nets,
            common.TimedTask(task, clock, every=cfg.steps_per_rollout),
            cfg.loop_config(),
            Path(run_dir),
            progress=False,
        )
    return {
        "side": "prefloop",
        "size": size,
        "bf16": bf16,
        "params_policy": common.count_params(policy),
        **s,
        "ppo_epochs": common.PPO_EPOCHS,
        "minibatches": common.PPO_MINIBATCHES,
        "step": common.stats(clock.steps()),
        "step_seconds": clock.steps(),
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


def compare(size: str, repeats: int, steps: int, warmup: int, bf16: bool) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"prefloop": [], "trl": []}
    n = ["--size", size, "--steps", str(steps), "--warmup", str(warmup), *(["--bf16"] * bf16)]
    for _ in range(repeats):
        runs["prefloop"].append(
            common.run_side([sys.executable, __file__, "--side", "prefloop", *n])
        )
        runs["trl"].append(common.run_side([*PEER, *n]))
    summary = common.pair_summary(runs, "prefloop", "trl")
    return {
        "runs": runs,
        "peer": "trl",
        "peer_version": runs["trl"][0]["peer_version"],
        "settings": {
            **common.PPO_SETTINGS[size],
            "ppo_epochs": common.PPO_EPOCHS,
            "minibatches": common.PPO_MINIBATCHES,
            "kl_coef": common.KL_COEF,
            "bf16": bf16,
        },
        **summary,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["prefloop"])
    ap.add_argument("--size", choices=sorted(common.SIZES))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="both sides with their bf16 setting")
    ap.add_argument("--out", default="ppo_vs_trl.json", help="results file under bench/results/")
    args = ap.parse_args()
    common.apply_threads()
    if args.side:
        common.emit(run_prefloop(args.size or "tiny", args.steps, args.warmup, args.bf16))
        return
    out: dict[str, Any] = {"target": "prefloop median PPO step >= 3x faster, peak RSS no higher"}
    print(
        "| size | prompts x tokens | prefloop step s median (min-max) | TRL 1.12.0 step s median "
        "(min-max) | speedup | prefloop RSS MB | TRL RSS MB |\n|---|---|---|---|---|---|---|"
    )
    for size in [args.size] if args.size else ["tiny", "20m"]:
        r = compare(size, args.repeats, args.steps, args.warmup, args.bf16)
        out[size] = r
        a, b, s = r["a"]["step"], r["b"]["step"], r["settings"]
        print(
            f"| {size} | {s['batch']}x{s['response_length']} | {a['median_s']:.3f} "
            f"({a['min_s']:.3f}-{a['max_s']:.3f}) | {b['median_s']:.3f} ({b['min_s']:.3f}-"
            f"{b['max_s']:.3f}) | {r['speedup']:.2f}x | {r['a']['peak_rss_mb']:.0f} | "
            f"{r['b']['peak_rss_mb']:.0f} |",
            flush=True,
        )
    print(f"wrote {common.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
