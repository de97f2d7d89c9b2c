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

import torch
from torch import nn


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

    `params` is what the optimizer steps: the masters in place of the bf16 parameters, in the
    order of `model.parameters()`, so optimizer state lines up with a float32 run's.

    With `bf16=False` it holds no masters and only clears gradients: the float32 training loop.
    """

    def __init__(self, model: nn.Module, bf16: bool, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        working = autocast_matmul_params(model) if bf16 else []
        self.pairs = [(p, nn.Parameter(p.data)) for p in working]  # the master owns the float32
        master_of = {id(p): m for p, m in self.pairs}
        self.params: list[torch.Tensor] = [
            master_of.get(id(p), p) for p in model.parameters() if p.requires_grad
        ]
        self.others = [p for p in model.parameters() if p.requires_grad and id(p) not in master_of]
        self.squares: dict[int, torch.Tensor] = {}  # id(master) -> its gradient's squared norm
        self._master = {id(p): m for p, m in self.pairs}
        self._seen: set[int] = set()  # masters given a gradient in this step
        self._last = True
        # each working weight's gradient moves into its master as soon as backward makes it
        self._hooks = [p.register_post_accumulate_grad_hook(self._collect) for p, _ in self.pairs]
        self._cast()

    def _cast(self) -> None:
        for p, m in self.pairs:
            p.data = m.data.to(self.dtype)

    def zero_grad(self) -> None:
        """Start a step: clear the float32 parameters' gradients; each master's is overwritten
        by the step's first backward that reaches its weight (the buffers are kept: no fresh
        pages every step)."""
        for p in self.others:
            p.grad = None
        self._seen = set()
        self.squares = {}

    def begin_backward(self, last: bool = True) -> None:
        """Before each backward: whether it is the step's `last` (then the gradients of the
        masters it reaches are final and their squared norms are taken, `squares`, for the
        clipping norm; `grad_norm` computes the others')."""
        self._last = last

    def _collect(self, p: torch.Tensor) -> None:
        """Backward hook: the working weight's bf16 gradient, just written (still in cache),
        moves into its master's float32 one (summed there over micro-batches); the bf16
        buffer is freed at once, for the next weight's gradient to reuse."""
        m, grad = self._master[id(p)], p.grad
        assert grad is not None
        if id(m) not in self._seen:
            self._seen.add(id(m))
            if m.grad is None:
                m.grad = grad.to(torch.float32)
            else:
                m.grad.copy_(grad)
        else:
            m.grad.add_(grad)  # type: ignore[union-attr]
        p.grad = None
        if self._last:
            g = m.grad.reshape(-1)  # type: ignore[union-attr]
            self.squares[id(m)] = torch.dot(g, g)

    def end_step_backward(self) -> None:
        """After the step's last backward: a master whose weight got no gradient has none
        (AdamW skips it, as it would the float32 parameter)."""
        for _, m in self.pairs:
            if id(m) not in self._seen:
                m.grad = None

    def refresh(self) -> None:
        """After the optimizer step: the working weights are the updated masters, rounded."""
        for p, m in self.pairs:
            p.data.copy_(m.data)

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """The model holds its float32 masters inside (evaluation, checkpoints, resume), and
        bf16 copies of whatever they are on the way out."""
        for p, m in self.pairs:
            p.data = m.data
        try:
            yield
        finally:
            self._cast()

    def release(self) -> None:
        """The model keeps its float32 masters for good (training is over), and no hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for p, m in self.pairs:
            p.data = m.data
            p.grad = None
