"""Peer side of the reward-model benchmark: TRL's RewardTrainer (latest TRL, /work/main/.venv).

    .venv/bin/python bench/peers/trl_reward.py --size tiny --mode plain
`--mode defaults` keeps RewardConfig's defaults (bf16 autocast + gradient checkpointing);
`--mode plain` turns both off (float32); `--mode bf16` keeps bf16 without checkpointing;
`--mode compile` is bf16 with `torch_compile=True`; `--mode compile-fp32` is float32 with it (the
fastest float32 setting on CPUs without AVX512-BF16). Batch 16 pairs, max_length 64, the pairs and the
initial sequence-classifier weights bench/common.py writes. Step time = wall clock between
consecutive `on_step_end` callbacks; the first `--warmup` steps are excluded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common
import torch
from _clock import Clock
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl import RewardConfig, RewardTrainer

BATCH = 16
MAX_LENGTH = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(common.SIZES), default="tiny")
    ap.add_argument(
        "--mode", choices=["defaults", "bf16", "plain", "compile", "compile-fp32"], default="plain"
    )
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    common.apply_threads()
    setup = common.prepare(args.size)
    tok = AutoTokenizer.from_pretrained(setup.tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(
        setup.reward, num_labels=1, dtype=torch.float32
    )
    total = args.warmup + args.steps
    rows = common.json.loads(setup.pairs.read_text())[: BATCH * total]
    data = Dataset.from_list(rows)
    extra = {
        "defaults": {},
        "bf16": {"bf16": True, "gradient_checkpointing": False},
        "plain": {"bf16": False, "gradient_checkpointing": False},
        "compile": {"bf16": True, "gradient_checkpointing": False, "torch_compile": True},
        "compile-fp32": {"bf16": False, "gradient_checkpointing": False, "torch_compile": True},
    }[args.mode]
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_length=MAX_LENGTH,
            max_steps=total,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=common.SEED,
            dataloader_drop_last=True,
            **extra,
        )
        clock = common.StepClock(args.warmup)
        trainer = RewardTrainer(
            model=model,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            callbacks=[Clock(clock)],
        )
        print(
            f"trl {version('trl')} RewardTrainer, size={args.size}, mode={args.mode} "
            f"(bf16={cfg.bf16}, gradient_checkpointing={cfg.gradient_checkpointing}), "
            f"torch threads={torch.get_num_threads()}",
            flush=True,
        )
        trainer.train()
    steps = clock.steps()
    med = common.stats(steps)["median_s"]
    common.emit(
        {
            "side": "trl",
            "peer": "trl",
            "peer_version": version("trl"),
            "trainer": "RewardTrainer",
            "size": args.size,
            "mode": args.mode,
            "bf16": bool(cfg.bf16),
            "gradient_checkpointing": bool(cfg.gradient_checkpointing),
            "params": common.count_params(model),
            "batch_pairs": BATCH,
            "max_length": MAX_LENGTH,
            "step": common.stats(steps),
            "pairs_per_s": BATCH / med,
            "step_seconds": steps,
            "peak_rss_mb": common.peak_rss_mb(),
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
