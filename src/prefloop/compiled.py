"""Small elementwise functions compiled by `torch.compile` (Inductor), with an eager fallback.

Used where ATen takes more passes or slower kernels than a hot path needs: GPT-2's tanh GELU
under bf16 (models/activation.py), the bf16 masters' AdamW step and gradient norm
(train/adamw.py). Inductor compiles once per process (dynamic shapes) and caches its
kernels on disk; it needs a C++ compiler on CPU. Without one, or on any compile error, the
fallback runs, after one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


class Compiled:
    """`fn` compiled on first call; `fallback` (the same function, eager) if compiling fails."""

    def __init__(self, fn: Callable[..., Any], fallback: Callable[..., Any], what: str) -> None:
        self.fn, self.fallback, self.what = fn, fallback, what
        self._compiled: Callable[..., Any] | None = None
        self.broken = False

    def __call__(self, *args: Any) -> Any:
        if self.broken:
            return self.fallback(*args)
        try:
            if self._compiled is None:
                import torch

                self._compiled = torch.compile(self.fn, dynamic=True)
            return self._compiled(*args)
        except Exception as e:  # no C++ compiler, or Inductor failed: eager does the same
            self.broken = True
            warnings.warn(
                f"compiling {self.what} failed ({type(e).__name__}: {str(e)[:200]}); "
                "running it eagerly",
                stacklevel=2,
            )
            return self.fallback(*args)
