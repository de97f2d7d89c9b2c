"""PPO against a reward source, on THE training loop (prefloop.train.loop).

One PPO iteration = one rollout (make experience with the current policy, under no_grad)
followed by `ppo_epochs` passes over shuffled minibatches of it; each minibatch is one optimizer
step of the loop (split into `grad_accum` micro-batches). The Task makes a fresh rollout at every
rollout boundary, so checkpoints fall on those boundaries and `--resume` regenerates exactly the
experience an uninterrupted run would have made (sampling and shuffling use their own seeded
generators, and the KL controller's state travels in the checkpoint).

Defaults follow docs/rlhf-notes.md (Huang et al., "The N Implementation Details of RLHF with PPO").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefloop.config import option
from prefloop.errors import PrefloopError
from prefloop.models.sampler import token_logprobs
from prefloop.train import losses as L
from prefloop.train.experience import Experience
from prefloop.train.loop import LoopConfig
from prefloop.train.rewards import RewardSource
from prefloop.train.rollout import PolicyAndValue, Rollout, make_experience


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
        )


# ---- KL controllers ---------------------------------------------------------------------------


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        super().__init__(value)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


def kl_controller(cfg: PpoConfig) -> FixedKLController:
    if cfg.kl_controller == "adaptive":
        return AdaptiveKLController(cfg.adaptive_kl_init, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


# ---- the Task ---------------------------------------------------------------------------------


class PpoTask:
    """microbatches(step): a fresh rollout at each rollout boundary, then shuffled minibatches."""

    def __init__(
        self,
        nets: PolicyAndValue,
        ref: Any,
        tokenizer: Any,
        reward: RewardSource,
        prompts: list[str],
        cfg: PpoConfig,
        gold: RewardSource | None = None,
    ) -> None:
        if len(prompts) < cfg.batch_size:
            raise PrefloopError(f"{len(prompts)} prompts, fewer than batch_size={cfg.batch_size}")
        self.nets, self.ref, self.tokenizer = nets, ref, tokenizer
        self.reward, self.gold, self.prompts, self.cfg = reward, gold, prompts, cfg
        self.kl = kl_controller(cfg)
        self.dropped = 0
        self.rollout_index = -1
        self.rollout: Rollout | None = None
        self.order: list[Tensor] = []  # one permutation of the rollout's rows per epoch
        self.samples: list[list[dict[str, Any]]] = []  # first/last rollouts' samples, for reports

    def _generator(self, *salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.cfg.seed, *salt)) % (2**62))

    def _prompt_batch(self, r: int) -> list[str]:
        per_epoch = len(self.prompts) // self.cfg.batch_size
        epoch, k = divmod(r, per_epoch)
        perm = torch.randperm(len(self.prompts), generator=self._generator(1, epoch))
        idx = perm[k * self.cfg.batch_size : (k + 1) * self.cfg.batch_size]
        return [self.prompts[i] for i in idx.tolist()]

    def make_rollout(self, r: int) -> None:
        rollout = make_experience(
            self.nets,
            self.ref,
            self.tokenizer,
            self.reward,
            self._prompt_batch(r),
            self.cfg,
            self.kl.value,
            seed=hash((self.cfg.seed, 2, r)) % (2**31),
            dropped_so_far=self.dropped,
            gold=self.gold,
        )
        n = len(rollout.experience)
        self.dropped += self.cfg.batch_size - n
        self.kl.update(rollout.metrics["charts/kl_k1"], n)
        self.rollout, self.rollout_index = rollout, r
        g = self._generator(3, r)
        self.order = [torch.randperm(n, generator=g) for _ in range(self.cfg.ppo_epochs)]
        if r == 0 or r == self.cfg.rollouts - 1:
            self.samples.append(rollout.samples)

    def microbatches(self, step: int) -> list[Experience]:
        r, k = divmod(step, self.cfg.steps_per_rollout)
        if k == 0:
            self.nets.eval()
            self.make_rollout(r)
            self.nets.train()
        if self.rollout_index != r or self.rollout is None:
            raise PrefloopError(
                f"cannot resume PPO at step {step}: checkpoints must fall on rollout boundaries "
                f"(every {self.cfg.steps_per_rollout} steps)"
            )
        epoch, mb = divmod(k, self.cfg.num_minibatches)
        rows = torch.tensor_split(self.order[epoch], self.cfg.num_minibatches)[mb]
        return [
            self.rollout.experience.select(i) for i in torch.tensor_split(rows, self.cfg.grad_accum)
        ]

    def loss(self, model: torch.nn.Module, batch: Experience) -> tuple[Tensor, dict[str, float]]:
        cfg, m = self.cfg, batch.response_mask
        P = batch.prompt_len
        logits, values = model(batch.sequences, batch.attention_mask, P)
        logp = token_logprobs(logits, batch.sequences[:, P:], cfg.temperature)
        pg_loss, pg = L.ppo_clip_loss(logp, batch.old_logprobs, batch.advantages, m, cfg.clip_eps)
        vf_loss, vf = L.value_loss_clipped(values, batch.values, batch.returns, m, cfg.vf_clip_eps)
        loss = pg_loss + cfg.vf_coef * vf_loss
        stats = {}
        # entropy is a full-vocabulary (B, T, V) computation: only when it is in the objective
        # (its default coefficient is 0; the rollout logs the policy's entropy anyway)
        if cfg.entropy_coef != 0:
            entropy = L.masked_mean(L.entropy_from_logits(logits, cfg.temperature), m)
            loss = loss - cfg.entropy_coef * entropy
            stats["charts/policy_entropy"] = float(entropy.detach())
        return loss, stats | {
            "loss/policy": float(pg_loss.detach()),
            "loss/value": float(vf_loss.detach()),
            "loss/total": float(loss.detach()),
            "charts/clipfrac": pg["clipfrac"],
            "charts/approx_kl": pg["approx_kl"],
            "charts/ratio": pg["ratio"],
            "charts/vf_clipfrac": vf["vf_clipfrac"],
        }

    def on_step_end(
        self, step: int, model: torch.nn.Module, row: dict[str, float]
    ) -> dict[str, float]:
        """The current rollout's statistics ride on every step of it (TensorBoard and history)."""
        assert self.rollout is not None
        return {**self.rollout.metrics, "charts/rollout": float(self.rollout_index + 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"kl": self.kl.state_dict(), "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.kl.load_state_dict(state["kl"])
            self.dropped = int(state.get("dropped", 0))


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Final metrics of a run: the last rollout's statistics and the last step's losses."""
    if not history:
        return {}
    last = history[-1]
    keys = (
        "charts/score",
        "charts/gold",
        "charts/kl_k1",
        "charts/kl_k3",
        "charts/entropy",
        "charts/response_length",
        "charts/eos_rate",
        "charts/kl_coef",
        "loss/value",
    )
    return {k.split("/")[-1]: last[k] for k in keys if k in last and math.isfinite(last[k])}


# ---- the stage --------------------------------------------------------------------------------


def dropout_off(model: torch.nn.Module) -> None:
    """rlhf-notes: dropout OFF in policy, reference, value and reward model (p=0 everywhere)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class AdaptersDisabled(torch.nn.Module):
    """The LoRA policy with its adapters switched off: the frozen base, i.e. the reference
    policy, without a second copy of the weights in memory."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, **kwargs: Any) -> Any:
        with torch.no_grad(), self.policy.disable_adapter():
            return self.policy(**kwargs)


def with_lora(policy: Any, cfg: PpoConfig) -> tuple[Any, torch.nn.Module]:
    """(policy with trainable LoRA adapters on a frozen base, the reference = adapters off)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,  # dropout off, as everywhere in PPO
        target_modules=cfg.lora_targets or None,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():  # the adapters' random init is a function of the seed
        torch.manual_seed(cfg.seed)
        model = get_peft_model(policy, lora)
    return model, AdaptersDisabled(model)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    dropout_off(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_value_model(
    cfg: PpoConfig, policy_path: str, tokenizer: Any, reward: RewardSource
) -> tuple[Any, str]:
    """The value network and where it came from ('reward', 'policy' or 'shared')."""
    from prefloop.models.reward import build_reward_model
    from prefloop.train.rewards import reward_models

    if cfg.value_init == "shared":
        return None, "shared"
    rms = reward_models(reward)
    same_vocab = bool(rms) and rms[0].tokenizer.get_vocab() == tokenizer.get_vocab()
    if cfg.value_init == "reward" and not same_vocab:
        raise PrefloopError(
            "value_init=reward needs a reward model that shares the policy's tokenizer "
            f"({'none is' if not rms else rms[0].name + ' is not'}); use --value-init policy",
            field="value_init",
        )
    if cfg.value_init in ("reward", "auto") and same_vocab:
        import copy

        value = copy.deepcopy(rms[0].model)
        source = "reward"
    else:
        value, source = build_reward_model(policy_path, tokenizer, seed=cfg.seed), "policy"
    dropout_off(value)
    for p in value.parameters():
        p.requires_grad_(True)
    return value, source


def load_prompts(cfg: PpoConfig) -> list[str]:
    """Prompts from cfg.prompts (.txt lines or rows with a 'prompt' field), or the embedded task."""
    if not cfg.prompts:
        from prefloop.data.reviews import rl_prompts

        return rl_prompts(cfg.num_prompts, cfg.seed, "train")
    from prefloop.data.rows import read_rows, require_str

    if cfg.prompts.endswith(".txt"):
        with open(cfg.prompts, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    return [
        require_str(row, "prompt", file=cfg.prompts, row_no=n) for n, row in read_rows(cfg.prompts)
    ]


def run_ppo(ws: Any, cfg: PpoConfig, *, progress: bool = True) -> Any:
    """`prefloop ppo`: train the policy against the reward source; register a 'ppo' version."""
    import json
    from dataclasses import asdict

    from prefloop.models.lm import load_model_and_tokenizer
    from prefloop.train.loop import train
    from prefloop.train.rewards import build_reward, reward_models

    policy_path = ws.resolve(cfg.policy)
    policy, tokenizer = load_model_and_tokenizer(policy_path)
    dropout_off(policy)
    if cfg.lora_r:
        policy, ref = with_lora(policy, cfg)
    else:
        ref = frozen(load_model_and_tokenizer(policy_path)[0])
    reward = build_reward(cfg.reward, ws)
    gold = build_reward([cfg.gold], ws) if cfg.gold else None
    value, value_source = build_value_model(cfg, policy_path, tokenizer, reward)
    nets = PolicyAndValue(policy, value)
    task = PpoTask(nets, ref, tokenizer, reward, load_prompts(cfg), cfg, gold)
    run_dir = ws.run_dir("ppo", cfg.resume)
    (run_dir / "ppo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    result = train(
        nets, task, cfg.loop_config(), run_dir, resume=cfg.resume, desc="ppo", progress=progress
    )
    (run_dir / "samples.json").write_text(json.dumps(task.samples, indent=1))
    metrics = {
        **summarize(result.history),
        "seconds": result.seconds,
        "step_seconds": result.seconds / max(1, len(result.history)),
    }
    if cfg.lora_r:  # saved as a plain HF model: the adapters merged into the base weights
        policy = policy.merge_and_unload()  # type: ignore[operator]
    version = ws.save_model(
        policy,
        tokenizer,
        "ppo",
        parent=ws.version_of(policy_path) or cfg.policy,
        data={"prompts": cfg.prompts or "embedded:reviews", "reward": reward.name},
        metrics=metrics,
        config=asdict(cfg),
        extra={
            "run_dir": str(run_dir),
            "reward": cfg.reward,
            "gold": cfg.gold,
            "value_init": value_source,
            "reward_versions": [ws.version_of(rm.path) for rm in reward_models(reward)],
        },
    )
    (run_dir / "DONE").write_text(version.name)
    return version
