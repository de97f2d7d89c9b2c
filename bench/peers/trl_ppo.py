"""Peer side of the PPO benchmark: TRL 1.12.0's PPOTrainer (trl.experimental.ppo) on CPU.

Run it with the TRL 1.12 environment (bench/.venv-trl112), e.g.
    bench/.venv-trl112/bin/python bench/peers/trl_ppo.py --size tiny
Separate policy, reference, reward (sequence classifier, num_labels=1) and value models loaded from
the files bench/common.py writes; float32 (or `--bf16`: PPOConfig(bf16=True)), no gradient
checkpointing. Step time = wall clock between consecutive `on_step_end` callbacks; the first
`--warmup` steps are excluded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common
import torch
from _clock import Clock
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(common.SIZES), default="tiny")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="PPOConfig(bf16=True)")
    args = ap.parse_args()
    common.apply_threads()
    torch.manual_seed(common.SEED)
    setup = common.prepare(args.size)
    cfg = common.PPO_SETTINGS[args.size]
    batch = cfg["batch"]

    tok = AutoTokenizer.from_pretrained(setup.tokenizer, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(setup.policy, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(setup.policy, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(
        setup.reward, num_labels=1, dtype=torch.float32
    )
    value = AutoModelForSequenceClassification.from_pretrained(
        setup.reward, num_labels=1, dtype=torch.float32
    )
    total_steps = args.warmup + args.steps
    texts = common.json.loads(setup.prompts.read_text())[: batch * total_steps]
    train = Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts]})
    evalset = Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts[:batch]]})

    with tempfile.TemporaryDirectory() as out:
        ppo_args = PPOConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            num_mini_batches=common.PPO_MINIBATCHES,
            num_ppo_epochs=common.PPO_EPOCHS,
            response_length=cfg["response_length"],
            kl_coef=common.KL_COEF,
            temperature=common.TEMPERATURE,
            stop_token="eos",
            bf16=args.bf16,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            total_episodes=batch * total_steps,
            num_sample_generations=0,
            report_to=[],
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            seed=common.SEED,
            local_rollout_forward_batch_size=batch,
        )
        clock = common.StepClock(args.warmup)
        trainer = PPOTrainer(
            args=ppo_args,
            processing_class=tok,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=train,
            eval_dataset=evalset,
            callbacks=[Clock(clock)],
        )
        print(
            f"trl {version('trl')} PPOTrainer, size={args.size}, "
            f"torch threads={torch.get_num_threads()}",
            flush=True,
        )
        trainer.train()

    steps = clock.steps()
    common.emit(
        {
            "side": "trl",
            "peer": "trl",
            "peer_version": version("trl"),
            "trainer": "PPOTrainer",
            "size": args.size,
            "bf16": args.bf16,
            "params_policy": common.count_params(policy),
            **cfg,
            "ppo_epochs": common.PPO_EPOCHS,
            "minibatches": common.PPO_MINIBATCHES,
            "step": common.stats(steps),
            "step_seconds": steps,
            "peak_rss_mb": common.peak_rss_mb(),
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
