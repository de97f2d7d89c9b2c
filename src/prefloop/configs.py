"""The settings of the training and evaluation stages (the loop, pretrain, sft, reward, ppo,
eval), in one torch-free module.

Each dataclass field is a command-line flag (`prefloop.config.option`: default and help), a key
of the stage's section in the workspace's config.yaml, and an attribute the stage reads. They
live here rather than beside their stage's code, which imports torch, so that
`prefloop <stage> --help` starts without importing torch and transformers (a few seconds). The
sampler's settings are torch-free beside it (models/sampling_params.py); light stages (pairs,
label, score, generate, demo) keep theirs with their code.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefloop.config import option

# the same option on the training loop and on PPO (which builds its loop config)
COMPILE_GELU_HELP = (
    "on CPU: GPT-2's tanh GELU compiled by torch.compile (bf16: ~2x faster than ATen's kernel; "
    "float32, on large activations: ~1.5x; 2-16 s to compile once, ~175 MB more memory, "
    "needs a C++ compiler)"
)


@dataclass
class LoopConfig:
    max_steps: int = option(500, "optimizer steps")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "cosine decay floor as a fraction of lr")
    warmup_steps: int = option(20, "linear warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only; biases and norms exempt)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.95, "AdamW beta2")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = option(0, "evaluate every N steps (0 = only at the end)")
    checkpoint_every: int = option(50, "checkpoint every N steps (0 = off)")
    log_every: int = option(10, "TensorBoard/progress update every N steps")
    seed: int = option(0, "random seed")
    deterministic: bool = option(False, "bitwise-reproducible CPU kernels (slower)")
    bf16: bool = option(
        False,
        "bfloat16 autocast for forward and loss; matmul weights train in bf16 against float32 "
        "masters in AdamW (checkpoints and the saved model are float32): "
        "faster on GPUs and on CPUs with AVX512-BF16 or AMX",
    )
    compile_gelu: bool = option(True, COMPILE_GELU_HELP)


@dataclass
class PretrainConfig(LoopConfig):
    data: str = option(
        "", "corpus: .txt/.jsonl/.parquet/.csv file, datasets folder or id ('' = embedded reviews)"
    )
    text_field: str = option("text", "field holding the text in JSONL/Parquet/datasets rows")
    embedded_docs: int = option(20000, "documents generated for the embedded corpus")
    model: str = option("", "start from this HF model (folder or hub id) instead of from scratch")
    tokenizer: str = option("", "HF tokenizer to use ('' = train a byte-level BPE on the corpus)")
    vocab_size: int = option(2048, "BPE vocabulary size when training a tokenizer")
    family: str = option("gpt2", "architecture when building from scratch: gpt2, llama, qwen2")
    size: str = option("tiny", "preset size: tiny (~1M), small (~4M), medium (~20M)")
    context: int = option(64, "context length (packed block size + 1)")
    batch_size: int = option(32, "sequences per micro-batch")
    eval_fraction: float = option(0.02, "fraction of packed blocks held out for eval loss")
    trust_remote_code: bool = option(False, "allow custom model code from the hub (off by default)")
    resume: bool = option(False, "continue the newest unfinished pretrain run")
    max_steps: int = option(400, "optimizer steps")
    lr: float = option(3e-3, "peak learning rate")
    warmup_steps: int = option(20, "linear warmup steps")


@dataclass
class SFTConfig(LoopConfig):
    data: str = option(
        "", "prompt/response or messages rows (JSONL/Parquet/datasets; '' = embedded)"
    )
    embedded_examples: int = option(8000, "examples generated for the embedded task")
    model: str = option(
        "latest:pretrain", "model to fine-tune: version, latest:<stage>, folder or hub id"
    )
    max_length: int = option(0, "truncate prompt+response to this many tokens (0 = model context)")
    truncation: str = option("left", "prompt too long: 'left' (truncate with a warning) or 'error'")
    batch_size: int = option(32, "examples per micro-batch")
    eval_fraction: float = option(0.05, "fraction of examples held out for eval loss")
    trust_remote_code: bool = option(False, "allow custom model code from the hub (off by default)")
    resume: bool = option(False, "continue the newest unfinished sft run")
    max_steps: int = option(150, "optimizer steps")
    lr: float = option(1e-3, "peak learning rate")
    warmup_steps: int = option(10, "linear warmup steps")


@dataclass
class RewardConfig(LoopConfig):
    model: str = option(
        "latest:sft", "initialize from this causal LM: version, latest:<stage>, folder"
    )
    db: str = option("", "preference store URL ('' = the workspace's preferences.db)")
    kinds: list[str] = option(  # noqa: RUF009 (option() builds a default_factory for lists)
        [], "annotator kinds to learn from: human end_user simulated imported"
    )
    sources: list[str] = option(  # noqa: RUF009
        [], "comparison sources to learn from (default: all)"
    )
    epochs: float = option(
        1.0, "passes over the training pairs (sets max_steps when it is 0; more overfits)"
    )
    batch_size: int = option(16, "comparison pairs per micro-batch (2x rows: chosen and rejected)")
    max_length: int = option(0, "prompt+response tokens kept, prompt cut first (0 = model context)")
    ties: str = option(
        "skip", "tie / both-bad labels: 'skip' or 'equal' (train toward equal scores)"
    )
    margin: float = option(
        0.0, "Bradley-Terry margin per unit of label strength (1 slight, 2 much)"
    )
    center_coef: float = option(0.0, "penalty coef * mean(r^2) keeping raw scores near 0")
    heldout_fraction: float = option(
        0.1, "fraction of prompts held out for accuracy and calibration"
    )
    gold: str = option(
        "auto", "gold for held-out accuracy: sentiment, none, auto (simulated labels)"
    )
    gold_tie_eps: float = option(
        0.05, "held-out pairs whose gold scores differ less are not scored"
    )
    ensemble: int = option(1, "train N reward models (seeds seed..seed+N-1): mean and spread")
    group_by_length: bool = option(True, "batch pairs of similar length together (less padding)")
    pack_width: int = option(
        1024,  # models/packing.py: GROUPED_LINE_WIDTH
        "pack pairs end to end in lines of up to this many tokens, each prompt once, no padding; "
        "attention runs pair by pair, so the default holds a batch in one line "
        "(0 = padded rows; GPT-2, Llama and Qwen2 families, others are padded)",
    )
    max_steps: int = option(0, "optimizer steps (0 = epochs x train pairs / batch size)")
    lr: float = option(5e-4, "peak learning rate")
    warmup_steps: int = option(10, "linear warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only)")
    checkpoint_every: int = option(0, "checkpoint every N steps (0 = off; a run takes seconds)")


@dataclass
class PpoConfig:
    # ---- models and data
    policy: str = option("latest:sft", "policy to start from (and the frozen reference)")
    reward: list[str] = option(  # noqa: RUF009 (option() builds a default_factory for lists)
        ["latest:reward"],
        "reward source(s), [WEIGHT*]SOURCE: a reward-model version/path, python:mod.func, or an "
        "http:// URL of `prefloop serve-reward`; several are summed with their weights",
    )
    gold: str = option(
        "", "gold scorer logged beside the reward, never optimized (python:mod.func)"
    )
    value_init: str = option(
        "auto",
        "value network: 'reward' (a copy of the reward model, N+ study), 'policy' (the policy "
        "with a scalar head), 'shared' (a head on the policy's backbone), 'auto' (reward if the "
        "reward source is a model with the policy's tokenizer, else policy)",
    )
    lora_r: int = option(
        0,
        "LoRA rank of the policy's adapters (0 = train every weight); with LoRA the reference "
        "is the same model with its adapters disabled, not a second copy",
    )
    lora_alpha: int = option(16, "LoRA scaling alpha")
    lora_targets: list[str] = option(  # noqa: RUF009
        [], "module names to adapt (default: peft's choice for the architecture)"
    )
    prompts: str = option(
        "",
        "prompt file (.txt one per line, or .jsonl with 'prompt'); "
        "empty = the embedded review task",
    )
    num_prompts: int = option(2048, "prompts drawn from the embedded task when no file is given")
    # ---- rollout
    rollouts: int = option(24, "PPO iterations (rollout + learning)")
    batch_size: int = option(64, "prompts per rollout (one response each)")
    max_new_tokens: int = option(32, "response length limit (tokens)")
    temperature: float = option(1.0, "sampling temperature; also divides the logits in the loss")
    top_p: float = option(1.0, "nucleus sampling at rollout time (biases the ratio if < 1)")
    top_k: int = option(0, "top-k sampling at rollout time (0 = off)")
    # ---- reward shaping
    kl_controller: str = option("fixed", "'fixed' β or 'adaptive' (Ziegler et al. 2019)")
    kl_coef: float = option(0.05, "β of the per-token KL penalty (fixed controller)")
    adaptive_kl_init: float = option(0.15, "initial β of the adaptive controller")
    kl_target: float = option(6.0, "adaptive controller: target KL per response (nats)")
    kl_horizon: int = option(10_000, "adaptive controller: horizon (samples)")
    penalize_missing_eos: bool = option(True, "responses without EOS get missing_eos_penalty")
    missing_eos_penalty: float = option(-1.0, "score of a response that hit max_new_tokens")
    whiten_rewards: bool = option(False, "scale per-token rewards to unit variance (no shift)")
    whiten_advantages: bool = option(True, "whiten advantages per rollout (shift and scale)")
    max_nan_rewards: int = option(16, "halt after this many samples scored NaN (dropped)")
    # ---- learning
    ppo_epochs: int = option(4, "passes over each rollout")
    num_minibatches: int = option(4, "minibatches (optimizer steps) per pass")
    grad_accum: int = option(1, "micro-batches per minibatch (gradient accumulation)")
    gamma: float = option(1.0, "GAE discount")
    lam: float = option(0.95, "GAE λ")
    clip_eps: float = option(0.2, "policy ratio clip ε")
    vf_clip_eps: float = option(0.2, "value clip ε_v")
    vf_coef: float = option(0.1, "value-loss coefficient")
    entropy_coef: float = option(0.0, "entropy bonus coefficient")
    lr: float = option(1e-4, "peak learning rate (policy and value)")
    min_lr_ratio: float = option(0.1, "cosine floor as a fraction of lr (annealing)")
    warmup_steps: int = option(8, "linear warmup steps (PyTorch Adam is aggressive early)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_eps: float = option(1e-5, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    # ---- run
    seed: int = option(0, "seed (sampling, shuffling, prompt order)")
    deterministic: bool = option(False, "bitwise-reproducible CPU kernels (resume equality)")
    checkpoint_every: int = option(4, "checkpoint every N rollouts (0 = off)")
    resume: bool = option(False, "continue the newest unfinished ppo run from its last checkpoint")
    bf16: bool = option(
        False,
        "bfloat16 autocast for rollouts and updates (matmul weights in bf16 against float32 "
        "masters in AdamW; log-probs in float32): faster on GPUs and on CPUs with AMX or AVX512-BF16",
    )
    compile_gelu: bool = option(True, COMPILE_GELU_HELP)

    def __post_init__(self) -> None:
        choices = {
            "value_init": ("auto", "reward", "policy", "shared"),
            "kl_controller": ("fixed", "adaptive"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        positive = (
            "rollouts",
            "batch_size",
            "max_new_tokens",
            "ppo_epochs",
            "num_minibatches",
            "grad_accum",
            "kl_horizon",
        )
        if self.lora_r < 0:
            raise ValueError("lora_r must be >= 0")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.num_minibatches * self.grad_accum > self.batch_size:
            raise ValueError("num_minibatches * grad_accum must not exceed batch_size")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for PPO (log-probs divide by it)")

    @property
    def steps_per_rollout(self) -> int:
        return self.ppo_epochs * self.num_minibatches

    def loop_config(self) -> LoopConfig:
        """The training-loop settings: one optimizer step per minibatch."""
        return LoopConfig(
            max_steps=self.rollouts * self.steps_per_rollout,
            lr=self.lr,
            min_lr_ratio=self.min_lr_ratio,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            adam_eps=self.adam_eps,
            grad_accum=self.grad_accum,
            max_grad_norm=self.max_grad_norm,
            eval_every=0,
            checkpoint_every=self.checkpoint_every * self.steps_per_rollout,
            log_every=1,
            seed=self.seed,
            deterministic=self.deterministic,
            bf16=self.bf16,
            compile_gelu=self.compile_gelu,
        )


@dataclass
class EvalConfig:
    prompts: str = option(
        "", "held-out prompt file (.txt or rows with 'prompt'); '' = embedded eval split"
    )
    num_prompts: int = option(200, "prompts drawn from the embedded eval split")
    reward: list[str] = option(  # noqa: RUF009 (option() builds a default_factory for lists)
        ["latest:reward"], "reward source(s) whose mean score is reported ('none' to skip)"
    )
    gold: str = option(
        "auto", "gold scorer (python:mod.func); 'auto' = VADER for the embedded task"
    )
    judge: str = option(
        "gold", "who decides A vs B: 'gold', 'annotator' (simulated), 'reward', or a reward source"
    )
    annotator_agreement: float = option(0.75, "simulated annotator's agreement with gold")
    reference: str = option("latest:sft", "reference policy for KL ('none' to skip)")
    max_new_tokens: int = option(32, "response length limit")
    temperature: float = option(1.0, "sampling temperature (also used for KL log-probs)")
    top_p: float = option(1.0, "nucleus sampling")
    seed: int = option(0, "sampling and bootstrap seed")
    show_samples: int = option(8, "samples kept side by side")
