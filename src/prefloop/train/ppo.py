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
from typing import Any

import torch
from torch import Tensor

from prefloop.configs import PpoConfig
from prefloop.errors import PrefloopError
from prefloop.models.sampler import token_logprobs
from prefloop.train import losses as L
from prefloop.train.experience import Experience
from prefloop.train.rewards import RewardSource
from prefloop.train.rollout import PolicyAndValue, Rollout, make_experience

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
