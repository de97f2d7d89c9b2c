"""Where prefloop's PPO step spends its time: wall clock per phase (not a comparison).

    .venv/bin/python bench/profile_ppo.py --size tiny [--ops] [--bf16]

Runs the same setup as bench/ppo_vs_trl.py (prefloop side) with timers wrapped around each
phase: sampling, reward scoring (decode + re-tokenize + forward), the policy+value and reference
forwards of the rollout, and per minibatch the loss forward, backward, clipping and AdamW step.
`--ops` adds a torch.profiler table of the top operators over the timed rollouts.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

TIMES: dict[str, float] = defaultdict(float)
ACTIVE = [False]


def timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if ACTIVE[0]:
                TIMES[name] += time.perf_counter() - t

    return wrapper


def patch() -> None:
    import prefloop.train.loop as loop
    import prefloop.train.ppo as ppo
    import prefloop.train.rollout as rollout
    from prefloop.train.rewards import RewardModelSource

    rollout.Sampler.generate_ids = timed("rollout: sampling", rollout.Sampler.generate_ids)
    RewardModelSource.score = timed("rollout: reward score (text)", RewardModelSource.score)
    rollout.make_experience = timed("rollout: total", rollout.make_experience)
    ppo.make_experience = rollout.make_experience
    fwd = rollout.PolicyAndValue.forward

    def nets_forward(self: Any, *a: Any, **k: Any) -> Any:
        name = (
            "learn: policy+value forward"
            if torch.is_grad_enabled()
            else "rollout: policy+value forward"
        )
        return timed(name, fwd)(self, *a, **k)

    values = rollout.PolicyAndValue.values

    def nets_values(self: Any, *a: Any, **k: Any) -> Any:
        if torch.is_grad_enabled():  # the learner's forward calls it: counted there
            return values(self, *a, **k)
        return timed("rollout: values", values)(self, *a, **k)

    rollout.PolicyAndValue.forward = nets_forward
    rollout.PolicyAndValue.values = nets_values
    ppo.PpoTask.loss = timed("learn: loss (forward + loss terms)", ppo.PpoTask.loss)
    torch.Tensor.backward = timed("learn: backward", torch.Tensor.backward)
    torch.optim.AdamW.step = timed("learn: AdamW step", torch.optim.AdamW.step)
    loop.clip_grad_norm = timed("learn: clip grad norm", loop.clip_grad_norm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(common.SIZES), default="tiny")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ops", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="PpoConfig(bf16=True)")
    args = ap.parse_args()
    common.apply_threads()
    patch()
    import ppo_vs_trl

    clock_start = common.StepClock.start

    def start(self: common.StepClock) -> None:  # timers on after the warmup rollout
        clock_start(self)

    orig_tick = common.StepClock.tick

    def tick(self: common.StepClock) -> None:
        orig_tick(self)
        if len(self.marks) == 2:  # warmup rollout done
            ACTIVE[0] = True
            if prof is not None:
                prof.start()

    common.StepClock.start = start  # type: ignore[method-assign]
    common.StepClock.tick = tick  # type: ignore[method-assign]
    prof = (
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
        if args.ops
        else None
    )
    result = ppo_vs_trl.run_prefloop(args.size, args.steps, 1, args.bf16)
    if prof is not None:
        prof.stop()
    total = sum(result["step_seconds"])
    print(
        f"prefloop PPO {args.size}: {args.steps} timed steps, {total:.2f} s, median step "
        f"{result['step']['median_s']:.3f} s, torch threads {torch.get_num_threads()}"
    )
    rollout_parts = sum(
        v for k, v in TIMES.items() if k.startswith("rollout: ") and k != "rollout: total"
    )
    TIMES["rollout: other (ref forward, GAE, padding)"] = TIMES["rollout: total"] - rollout_parts
    for name in sorted(TIMES):
        print(
            f"  {name:45s} {TIMES[name] / args.steps * 1e3:9.1f} ms/step"
            f"  {TIMES[name] / total:6.1%}"
        )
    if prof is not None:
        print(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=40
            )
        )


if __name__ == "__main__":
    main()
