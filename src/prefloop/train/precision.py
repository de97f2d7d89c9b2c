"""bf16 working weights with float32 masters, for bf16 training.

Under autocast every forward casts each float32 matmul weight to bf16 (into a fresh buffer) and
every backward casts its bf16 gradient back to float32. On CPU those casts are memory-bound: ~12%
of a 21M-parameter reward model's forward + backward on a Zen 4, a 286 -> 216 ms step on a Zen 5
(docs/benchmarks.md). Autocast runs Linear (and GPT-2's Conv1D addmm) in bf16 whatever its
weights' dtype, so keeping exactly those weights and biases in bf16 computes the same numbers
without the casts. Embeddings (and a head tied to them), norms and anything frozen stay as they
are, so the residual stream keeps its precision. The optimizer updates float32 masters: small
updates are not lost to bf16 rounding, and checkpoints and the trained model hold the masters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prefloop.train import adamw


def autocast_matmul_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable weights and biases of Linear and Conv1D modules that no embedding shares."""
    # a head tied to the token embedding also feeds the lookup, whose output autocast keeps
    # float32: that weight stays float32 (skip starts with the embeddings' parameters)
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    out = []
    for module in model.modules():
        if not (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            continue
        for p in module.parameters(recurse=False):
            if p.requires_grad and p.dtype == torch.float32 and id(p) not in skip:
                skip.add(id(p))  # shared between modules: once
                out.append(p)
    return out


class MasterWeights:
    """Float32 masters for a model's autocast matmul weights, which train in bf16.

    `params` is what the optimizer holds: the masters in place of the bf16 parameters, in the
    order of `model.parameters()`, so optimizer state lines up with a float32 run's and
    checkpoints are torch's. The masters live in one flat float32 buffer, their AdamW moments
    in two more (the optimizer's state views them) and their gradients in a flat bf16 one, so
    `step` updates them all in one pass over memory (train/adamw.py). torch's AdamW steps the
    other parameters (embeddings, norms); the masters never hold a `.grad`, so it skips them.

    With `bf16=False` it holds no masters and only clears gradients: the float32 training loop.
    """

    def __init__(self, model: nn.Module, bf16: bool, dtype: torch.dtype = torch.bfloat16) -> None:
        working = autocast_matmul_params(model) if bf16 else []
        # matrices, then vectors: each of make_optimizer's two groups is one run of the buffers
        working.sort(key=lambda p: p.ndim < 2)
        total = sum(p.numel() for p in working)
        self.flat = torch.empty(total)  # the masters
        self.flat_working = torch.empty(total, dtype=dtype)  # the model's bf16 weights
        self.flat_grad = torch.empty(total, dtype=dtype)  # float32 once micro-batches add up
        self.flat_avg, self.flat_avg_sq = torch.zeros(total), torch.zeros(total)
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.spans: dict[int, slice] = {}  # id(master), id(working weight) -> its slice
        start = 0
        for p in working:
            span = self.spans[id(p)] = slice(start, start + p.numel())
            start = span.stop
            self.flat[span].copy_(p.data.reshape(-1))
            m = nn.Parameter(self.flat[span].view_as(p))
            self.spans[id(m)] = span
            self.pairs.append((p, m))
        master_of = {id(p): m for p, m in self.pairs}
        self.params: list[torch.Tensor] = [
            master_of.get(id(p), p) for p in model.parameters() if p.requires_grad
        ]
        self.others = [p for p in model.parameters() if p.requires_grad and id(p) not in master_of]
        if self.pairs:
            # from_pretrained may leave the weights viewing the safetensors file's memory map:
            # the masters' old pages stay resident (4 bytes a parameter: 72 MB at 21M) as long
            # as any tensor views the map, so the other weights (embeddings, norms) move out too
            for p in self.others:
                p.data = p.data.clone()
        self._seen: set[int] = set()  # working weights given a gradient in this step
        self._first = True  # before the step's first backward
        # each working weight's gradient moves into the flat buffer as soon as backward makes it
        self._hooks = [p.register_post_accumulate_grad_hook(self._collect) for p, _ in self.pairs]
        self._cast()

    def _cast(self) -> None:
        self.flat_working.copy_(self.flat)
        for p, _ in self.pairs:
            p.data = self.flat_working[self.spans[id(p)]].view_as(p)

    def zero_grad(self) -> None:
        """Start a step: clear the float32 parameters' gradients; the masters' are overwritten
        by the step's first backward that reaches their weight."""
        for p in self.others:
            p.grad = None
        self._seen = set()
        self._first = True

    def begin_backward(self, last: bool = True) -> None:
        """Before each backward: whether it is the step's `last`. A step of several backwards
        sums their gradients in float32 (from then on; a bf16 sum would lose bits)."""
        if not (last and self._first) and self.flat_grad.dtype != torch.float32:
            self.flat_grad = torch.empty(self.flat_grad.shape)
        self._first = False

    def _collect(self, p: torch.Tensor) -> None:
        """Backward hook: the working weight's bf16 gradient, just written (still in cache),
        moves into the flat buffer (summed there over micro-batches); the bf16 tensor is freed
        at once, for the next weight's gradient to reuse."""
        grad = p.grad
        assert grad is not None
        into = self.flat_grad[self.spans[id(p)]]
        if id(p) in self._seen:
            into.add_(grad.reshape(-1))
        else:
            self._seen.add(id(p))
            into.copy_(grad.reshape(-1))
        p.grad = None

    def end_step_backward(self) -> None:
        """After the step's last backward: a weight that got no gradient counts nothing in the
        norm, and `step` leaves it (AdamW skips a float32 parameter without one)."""
        for p, _ in self.pairs:
            if id(p) not in self._seen:
                self.flat_grad[self.spans[id(p)]] = 0

    def squared_grad_norm(self) -> torch.Tensor | None:
        """The squared L2 norm of the masters' gradients, in float32 (None: no masters)."""
        return adamw.squared_norm(self.flat_grad) if self.pairs else None

    def step(self, opt: torch.optim.Optimizer) -> None:
        """After `opt.step()` (the other parameters): the masters' AdamW step with their groups'
        hyperparameters, master, moments and working weight in one pass over each run of
        weights that share a group and a step count (normally two runs: matrices, vectors)."""
        scale = getattr(opt, "grad_scale", None)  # clipping (loop.clip_in_step)
        scale = 1.0 if scale is None else float(scale)
        group_of = {id(q): i for i, g in enumerate(opt.param_groups) for q in g["params"]}
        runs: list[tuple[int, int, slice]] = []  # (group, step count, span), in buffer order
        for p, m in self.pairs:
            if id(p) not in self._seen:
                continue
            state = self._state(opt, m)
            state["step"] += 1
            key, span = (group_of[id(m)], int(state["step"])), self.spans[id(m)]
            if runs and runs[-1][:2] == key and runs[-1][2].stop == span.start:
                span = slice(runs.pop()[2].start, span.stop)
            runs.append((*key, span))
        for i, count, span in runs:
            g = opt.param_groups[i]
            scalars = adamw.AdamWScalars.of(
                g["lr"], g["weight_decay"], g["betas"], g["eps"], count, scale
            )
            adamw.adamw_step(
                self.flat[span],
                self.flat_avg[span],
                self.flat_avg_sq[span],
                self.flat_grad[span],
                self.flat_working[span],
                scalars,
            )

    def _state(self, opt: torch.optim.Optimizer, m: nn.Parameter) -> dict[str, Any]:
        """The master's AdamW state in torch's form, its moments views of the flat buffers
        (after `load_state_dict` they are fresh tensors: their values move into the buffers)."""
        state, span = opt.state[m], self.spans[id(m)]
        avg, avg_sq = self.flat_avg[span].view_as(m), self.flat_avg_sq[span].view_as(m)
        if "exp_avg" not in state:
            avg.zero_(), avg_sq.zero_()
            state["step"] = torch.tensor(0.0)
        elif state["exp_avg"].data_ptr() != avg.data_ptr():
            avg.copy_(state["exp_avg"]), avg_sq.copy_(state["exp_avg_sq"])
        state["exp_avg"], state["exp_avg_sq"] = avg, avg_sq
        return state

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """The model holds float32 copies of its masters inside (evaluation, checkpoints,
        resume: safetensors refuses views of one buffer), which the masters take back on the
        way out (a checkpoint loaded inside), and bf16 copies of them after."""
        for p, m in self.pairs:
            p.data = m.data.clone()
        try:
            yield
        finally:
            for p, m in self.pairs:
                m.data.copy_(p.data)
            self._cast()

    def release(self) -> None:
        """The model keeps float32 copies of its masters for good (training is over), and no
        hooks. The bf16 buffers go before the copies are made: no more memory than training."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for p, m in self.pairs:
            p.data, p.grad = m.data, None
        self.flat_working = self.flat_grad = torch.empty(0)
        for p, _ in self.pairs:
            p.data = p.data.clone()
        self.pairs = []  # released once
