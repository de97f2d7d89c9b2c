"""Shared setup for the benchmarks: one tokenizer, one set of model weights, one data set.

Both sides of every comparison load what `prepare()` writes to disk, so they start from the same
tokenizer, the same initial weights and the same prompts/pairs. This module must not import
prefloop: the peer scripts (TRL, in their own virtual environments) import it too.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EOS = "<|endoftext|>"
PAD = "<|pad|>"
VOCAB_SIZE = 4096
N_POSITIONS = 256
SEED = 1234

# GPT-2 shapes. "tiny" is the 2-layer, 128-wide model (~0.95M parameters with the
# 4,096-token vocabulary); "20m" is ~21M parameters (6 layers, 512 wide, 8 heads of 64).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128},
    "20m": {"n_layer": 6, "n_head": 8, "n_embd": 512},
}

WORK_DIR = Path(os.environ.get("PREFLOOP_BENCH_DIR", "/tmp/prefloop-bench"))
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_SUBJECTS = [
    "The movie",
    "This film",
    "The phone",
    "This blender",
    "The sequel",
    "The hotel",
    "This laptop",
    "The novel",
    "The restaurant",
    "This camera",
    "The show",
    "The album",
]
_VERBS = ["was", "felt", "seemed", "turned out", "is", "looked"]
_POS = ["wonderful", "great", "delightful", "superb", "charming", "reliable", "brilliant", "fun"]
_NEG = ["terrible", "boring", "awful", "dull", "broken", "disappointing", "clumsy", "noisy"]
_ADV = ["really", "truly", "quite", "rather", "somewhat", "very", "surprisingly", "honestly"]
_TAILS = [
    "and I would buy it again.",
    "and the ending surprised me.",
    "but the price was high.",
    "so I returned it.",
    "and my family agreed.",
    "for the whole weekend.",
    "compared to the last one.",
    "even after a month of use.",
    "from start to finish.",
]


# fmt: off
_SYLLABLES = [
    "ka", "lo", "mi", "ra", "ten", "vo", "shi", "pel", "dra", "qu", "zen", "bor", "ix", "ul",
    "fa", "ne", "gri", "tho", "wen", "sa", "mor", "del", "cy", "pha", "trum", "ost", "ba", "ki",
    "lu", "nor", "pri", "sto", "ve", "yan", "gol", "hex", "jo", "ruk", "amb", "ces", "dun", "fip",
]
# fmt: on


def brand(rng: random.Random) -> str:
    """A made-up product name: enough distinct words for a 4,096-token BPE vocabulary."""
    name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    return name.capitalize() + (f" {rng.randint(2, 99)}" if rng.random() < 0.3 else "")


def review(rng: random.Random, positive: bool) -> str:
    """One short synthetic review sentence (the benchmarks' corpus; not prefloop's)."""
    words = _POS if positive else _NEG
    subject = rng.choice(_SUBJECTS) if rng.random() < 0.6 else f"The {brand(rng)}"
    return (
        f"{subject} {rng.choice(_VERBS)} {rng.choice(_ADV)} "
        f"{rng.choice(words)} {rng.choice(_TAILS)}"
    )


def corpus(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(review(rng, rng.random() < 0.5) for _ in range(rng.randint(1, 3)))
        for _ in range(n)
    ]


def prompts(n: int, seed: int = SEED + 1) -> list[str]:
    """Prompts of a few tokens: the start of a review."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)}" for _ in range(n)]


def pairs(n: int, seed: int = SEED + 2) -> list[dict[str, str]]:
    """TRL-format preference rows (prompt/chosen/rejected), chosen positive, rejected negative."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)}"
        good = " " + " ".join(review(rng, True) for _ in range(rng.randint(1, 2)))
        bad = " " + " ".join(review(rng, False) for _ in range(rng.randint(1, 2)))
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def train_tokenizer(texts: list[str]) -> Any:
    """Byte-level BPE with a pad token distinct from EOS, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        model_max_length=N_POSITIONS,
    )


def gpt2_config(size: str, tokenizer: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        **SIZES[size],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        # dropout off, as prefloop builds its models and as TRL's trainers force anyway
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
    )


@dataclass(frozen=True)
class Setup:
    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def reward(self) -> Path:
        return self.root / "reward"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.json"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.json"


def prepare(size: str) -> Setup:
    """Write (once) tokenizer, policy (causal LM) and reward (sequence classifier) for `size`."""
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    setup = Setup(WORK_DIR / size)
    if (setup.root / "done").exists():
        return setup
    setup.root.mkdir(parents=True, exist_ok=True)
    tok_dir = WORK_DIR / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(corpus(20_000)).save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.save_pretrained(setup.tokenizer)
    torch.manual_seed(SEED)
    config = gpt2_config(size, tokenizer)
    GPT2LMHeadModel(config).save_pretrained(setup.policy)
    tokenizer.save_pretrained(setup.policy)
    GPT2ForSequenceClassification(config).save_pretrained(setup.reward)
    tokenizer.save_pretrained(setup.reward)
    setup.prompts.write_text(json.dumps(prompts(4096)))
    setup.pairs.write_text(json.dumps(pairs(4096)))
    (setup.root / "done").write_text("ok\n")
    return setup


def apply_threads() -> int:
    """Both sides use the same torch thread count: torch's default, or PREFLOOP_BENCH_THREADS."""
    if os.environ.get("PREFLOOP_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["PREFLOOP_BENCH_THREADS"]))
    return torch.get_num_threads()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stats(seconds: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
    }


class StepClock:
    """Wall-clock seconds between consecutive step ends; the first `warmup` steps are dropped."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.marks: list[float] = []

    def start(self) -> None:
        self.marks = [time.perf_counter()]

    def tick(self) -> None:
        self.marks.append(time.perf_counter())

    def steps(self) -> list[float]:
        deltas = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return deltas[self.warmup :]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def emit(result: dict[str, Any]) -> None:
    """Print a result as the last line of stdout, prefixed so a driver can find it."""
    print("RESULT " + json.dumps(result), flush=True)


def run_side(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one benchmark side in its own process and return its RESULT line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark side failed ({proc.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1][len("RESULT ") :])


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write results; keys already in the file from an earlier run (e.g. another size) stay."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(data)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(path)
    return path


# PPO settings of the issue, per size: prompts per batch and response tokens.
PPO_SETTINGS: dict[str, dict[str, int]] = {
    "tiny": {"batch": 16, "response_length": 24},
    "20m": {"batch": 32, "response_length": 48},
}
PPO_EPOCHS = 4
PPO_MINIBATCHES = 1
KL_COEF = 0.05
TEMPERATURE = 1.0


def side_summary(runs: list[dict[str, Any]], work_key: str | None = None) -> dict[str, Any]:
    """Pool one side's timed steps over its interleaved runs; peak RSS is the max over runs."""
    pooled = [s for r in runs for s in r["step_seconds"]]
    out: dict[str, Any] = {
        "step": stats(pooled),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }
    if work_key:
        work = statistics.mean(r[work_key] for r in runs)
        out[work_key] = work
        out["per_s"] = work / out["step"]["median_s"]
    return out


def pair_summary(
    runs: dict[str, list[dict[str, Any]]], a: str, b: str, work_key: str | None = None
) -> dict[str, Any]:
    """Side a vs side b: speedup = b's median step time / a's (or a's rate / b's with work_key)."""
    sa, sb = side_summary(runs[a], work_key), side_summary(runs[b], work_key)
    if work_key:
        speedup = sa["per_s"] / sb["per_s"]
    else:
        speedup = sb["step"]["median_s"] / sa["step"]["median_s"]
    return {
        "a": sa,
        "b": sb,
        "speedup": speedup,
        "rss_ratio": sa["peak_rss_mb"] / sb["peak_rss_mb"],
    }


class TimedTask:
    """Wraps a prefloop training-loop Task: the clock ticks at the loop's step end.

    `every` > 1 ticks once per group of loop steps (PPO: one rollout + its epochs x minibatches
    is one step on TRL's side). Defined here without importing prefloop."""

    def __init__(self, task: Any, clock: StepClock, every: int = 1) -> None:
        self.task, self.clock, self.every = task, clock, every

    def microbatches(self, step: int) -> Any:
        return self.task.microbatches(step)

    def loss(self, model: torch.nn.Module, batch: Any) -> Any:
        return self.task.loss(model, batch)

    def on_step_end(self, step: int, model: torch.nn.Module, row: dict[str, float]) -> Any:
        extra = self.task.on_step_end(step, model, row) if hasattr(self.task, "on_step_end") else {}
        if (step + 1) % self.every == 0:
            self.clock.tick()
        return extra or {}
