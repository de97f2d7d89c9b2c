"""AdamW for bf16 working weights with float32 masters, in one pass over memory.

torch's fused AdamW steps float32 parameters from float32 gradients. For bf16 training that
takes three passes over every weight: the bf16 gradient cast into a float32 one, the AdamW step,
the updated master cast back into the bf16 working weight; ~40 bytes of memory traffic per
parameter, and on CPU that traffic is the cost (a 21M reward step spends more time there than in
its largest matmul). `adamw_step` reads the bf16 gradient, steps master and moments, and writes
the rounded working weight in the same loop: ~30 bytes. Compiled by Inductor
(`prefloop.compiled`); the eager fallback computes the same, in chunks.

The arithmetic is torch's AdamW (decoupled weight decay, bias-corrected moments, the gradient
divided by `grad_scale`, as torch's fused kernel does for GradScaler and our in-step clipping),
so a run matches torch's optimizer up to float32 rounding order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from prefloop.compiled import Compiled


class AdamWScalars(NamedTuple):
    """One step's scalars for a run of weights, as float32 0-d tensors (a new value each step
    must not recompile), in `_adamw`'s order."""

    decay: torch.Tensor  # 1 - lr * weight_decay
    step_size: torch.Tensor  # lr / (1 - beta1^t)
    bias2_sqrt: torch.Tensor  # sqrt(1 - beta2^t)
    eps: torch.Tensor
    one_minus_beta1: torch.Tensor  # taken in float64, as torch does
    beta2: torch.Tensor
    one_minus_beta2: torch.Tensor
    inv_scale: torch.Tensor  # 1 / grad_scale (1: no clipping)

    @classmethod
    def of(
        cls,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        step: int,
        grad_scale: float = 1.0,
    ) -> AdamWScalars:
        b1, b2 = betas

        def t(x: float) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.float32)

        return cls(
            decay=t(1 - lr * weight_decay),
            step_size=t(lr / (1 - b1**step)),
            bias2_sqrt=t(math.sqrt(1 - b2**step)),
            eps=t(eps),
            one_minus_beta1=t(1 - b1),
            beta2=t(b2),
            one_minus_beta2=t(1 - b2),
            inv_scale=t(1 / grad_scale),
        )


def _adamw(
    master: torch.Tensor,  # float32, updated in place
    exp_avg: torch.Tensor,  # float32, in place
    exp_avg_sq: torch.Tensor,  # float32, in place
    grad: torch.Tensor,  # bf16 or float32
    working: torch.Tensor,  # bf16: the rounded new master
    decay: torch.Tensor,
    step_size: torch.Tensor,
    bias2_sqrt: torch.Tensor,
    eps: torch.Tensor,
    one_minus_beta1: torch.Tensor,
    beta2: torch.Tensor,
    one_minus_beta2: torch.Tensor,
    inv_scale: torch.Tensor,
) -> None:
    g = grad.float() * inv_scale
    p = master * decay
    m = exp_avg + one_minus_beta1 * (g - exp_avg)  # torch.lerp(exp_avg, g, 1 - beta1)
    v = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    p = p - step_size * m / (v.sqrt() / bias2_sqrt + eps)
    master.copy_(p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    working.copy_(p)


_CHUNK = 1 << 18  # eager fallback: temporaries stay cache-sized


def _adamw_chunked(master: torch.Tensor, *rest: torch.Tensor) -> None:
    tensors, scalars = rest[:4], rest[4:]
    for i in range(0, master.numel(), _CHUNK):
        _adamw(master[i : i + _CHUNK], *(x[i : i + _CHUNK] for x in tensors), *scalars)


_compiled = Compiled(_adamw, _adamw_chunked, "the bf16 AdamW step")


def adamw_step(
    master: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    working: torch.Tensor,
    s: AdamWScalars,
) -> None:
    """One AdamW step on flat (1-D, contiguous) tensors of equal length, in place; `working`
    receives the new master rounded to its dtype."""
    _compiled(master, exp_avg, exp_avg_sq, grad, working, *s)


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    return x.float().square().sum()


def _squared_norm_chunked(x: torch.Tensor) -> torch.Tensor:
    return sum(
        (_squared_norm(x[i : i + _CHUNK]) for i in range(0, x.numel(), _CHUNK)),
        x.new_zeros((), dtype=torch.float32),
    )


_compiled_norm = Compiled(_squared_norm, _squared_norm_chunked, "a gradient norm")


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of a flat tensor, in float32, in one pass (no float32 copy of a bf16 `x`)."""
    return _compiled_norm(x)
