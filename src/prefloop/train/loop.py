"""THE training loop. Pretraining, SFT, reward modelling and PPO all run through `train`.

A stage supplies a `Task` (its micro-batches and its loss); the loop owns everything else:
AdamW, warmup + cosine schedule, gradient accumulation and clipping, the NaN/inf guard,
atomic checkpoints and `resume`, TensorBoard, the progress bar and the run history.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from prefloop.configs import LoopConfig
from prefloop.errors import PrefloopError
from prefloop.models import activation, attention
from prefloop.train import heap
from prefloop.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefloop.train.precision import MasterWeights


class Task(Protocol):
    def microbatches(self, step: int) -> Sequence[Any]: ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class TrainResult:
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(params: Sequence[torch.Tensor], cfg: LoopConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        fused=True,  # one kernel per step over all parameters (CPU and CUDA)
    )


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def grad_norm(params: Sequence[torch.Tensor], squared: torch.Tensor | None = None) -> torch.Tensor:
    """The global L2 norm of the gradients, as torch's clip_grad_norm_ computes it, with each
    squared norm as a dot product (~2x faster than vector_norm on CPU); `squared` adds the
    squared norm of gradients that live elsewhere (MasterWeights.squared_grad_norm)."""
    sq = [torch.dot(p.grad.reshape(-1), p.grad.reshape(-1)) for p in params if p.grad is not None]
    if squared is not None:
        sq.append(squared)
    return torch.stack(sq).sum().sqrt() if sq else torch.tensor(0.0)


def clip_in_step(opt: torch.optim.Optimizer, norm: float, max_norm: float) -> None:
    """Make the next (fused) AdamW step clip the gradients to `max_norm` (0 = never).

    torch's clip_grad_norm_ multiplies every gradient by max_norm / (norm + 1e-6) in a pass of
    its own (a read and a write of all gradients: ~2% of a 21M reward step on CPU). The fused
    kernel instead divides each gradient by `grad_scale` as it reads it (the hook GradScaler
    uses to unscale): the same update up to float rounding. Nothing clipped: no scale at all.
    """
    clip = bool(max_norm) and math.isfinite(norm) and norm > max_norm
    opt.grad_scale = torch.tensor((norm + 1e-6) / max_norm) if clip else None  # type: ignore[attr-defined]


def cpu_computes_bf16() -> bool | None:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), from /proc/cpuinfo's flags;
    None where that file does not exist (not Linux)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _finite(x: float) -> bool:
    return math.isfinite(x)


def train(
    model: torch.nn.Module,
    task: Task,
    cfg: LoopConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = MasterWeights(model, bf16=cfg.bf16)
    on_cpu = all(p.device.type == "cpu" for p in weights.params)
    try:
        with heap.retained(on_cpu):  # each step reuses the last one's freed buffers (heap.py)
            return _train(model, task, cfg, run_dir, weights, resume, desc, progress)
    finally:
        weights.release()  # the model leaves with its float32 weights, whatever happened
        activation.uninstall(model)  # and transformers' own GELU modules


def _train(
    model: torch.nn.Module,
    task: Task,
    cfg: LoopConfig,
    run_dir: Path,
    weights: MasterWeights,
    resume: bool,
    desc: str,
    progress: bool,
) -> TrainResult:
    ckpt_dir = run_dir / "checkpoints"
    params = weights.params  # what AdamW steps: float32 masters under bf16
    device = params[0].device.type if params else "cpu"
    opt = make_optimizer(params, cfg)
    result = TrainResult(steps=0)
    start = 0
    if resume and (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        with weights.full_precision():
            state = load_checkpoint(ckpt, model, opt)
        start = state["step"]
        result.history = state.get("history", [])
        if hasattr(task, "load_state_dict"):
            task.load_state_dict(state.get("task", {}))
    else:
        seed_everything(cfg.seed, cfg.deterministic)
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    model.train()
    if device == "cpu":
        # packed reward lines attend pair by pair; CPU bf16 SDPA backward is slow: reroute it
        attention.install()  # (models/attention.py)
        if cfg.compile_gelu:
            activation.install(model)  # ATen's tanh-GELU is slow on CPU (models/activation.py)
    if cfg.bf16 and device == "cpu" and cpu_computes_bf16() is False:
        warnings.warn(
            "bf16 on a CPU without AVX512-BF16 or AMX is emulated and usually slower than "
            "float32: consider --no-bf16",
            stacklevel=2,
        )
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.max_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True
    )
    last_good = latest_checkpoint(ckpt_dir)
    for step in range(start, cfg.max_steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with _autocast(device, cfg):  # a task that makes experience (PPO) does it here
            batches = task.microbatches(step)
        weights.zero_grad()
        sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            with _autocast(device, cfg):
                loss, metrics = task.loss(model, batch)
            if not _finite(loss.item()):
                _halt(f"loss is {loss.item()} at step {step + 1}", last_good)
            weights.begin_backward(last=i == len(batches) - 1)
            (loss / len(batches)).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(batches)
        weights.end_step_backward()
        norm = float(grad_norm(params, weights.squared_grad_norm()))
        if not _finite(norm):
            _halt(f"gradient norm is {norm} at step {step + 1}", last_good)
        clip_in_step(opt, norm, cfg.max_grad_norm)
        opt.step()  # the float32 parameters
        weights.step(opt)  # the bf16 weights' masters (train/adamw.py)
        row = {"step": step + 1, "charts/lr": lr, "charts/grad_norm": norm, **sums}
        if hasattr(task, "on_step_end"):
            row.update(task.on_step_end(step, model, row) or {})
        result.history.append(row)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(k, v, step + 1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in sums.items() if "loss" in k})
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and hasattr(task, "evaluate"):
            with weights.full_precision():
                result.eval = _evaluate(task, model, writer, step + 1)
        bar.update(1)
        if (
            cfg.checkpoint_every
            and (step + 1) % cfg.checkpoint_every == 0
            and step + 1 < cfg.max_steps
        ):
            extra = {"history": result.history}
            if hasattr(task, "state_dict"):
                extra["task"] = task.state_dict()
            with weights.full_precision():
                last_good = save_checkpoint(ckpt_dir, step + 1, model, opt, extra)
    bar.close()
    weights.release()
    if hasattr(task, "evaluate") and not (cfg.eval_every and cfg.max_steps % cfg.eval_every == 0):
        result.eval = _evaluate(task, model, writer, cfg.max_steps)
    writer.close()
    model.eval()
    result.steps = cfg.max_steps
    result.final = result.history[-1] if result.history else {}
    result.seconds = time.perf_counter() - t0
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.history))
    return result


def _autocast(device: str, cfg: LoopConfig) -> torch.autocast:
    return torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16)


def _evaluate(
    task: Any, model: torch.nn.Module, writer: SummaryWriter, step: int
) -> dict[str, float]:
    """Evaluate without touching the training RNG stream (so eval never changes a run)."""
    model.eval()
    with torch.random.fork_rng(), torch.no_grad():
        metrics = task.evaluate(model)
    model.train()
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
    return dict(metrics)


def _halt(what: str, last_good: Path | None) -> None:
    kept = (
        f"; last good checkpoint: {last_good}" if last_good else "; no checkpoint was written yet"
    )
    raise PrefloopError(f"training stopped: {what}{kept}")
