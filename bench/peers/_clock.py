"""The benchmark step clock as a transformers TrainerCallback, shared by the TRL peers: the peer's
step time is the wall clock between consecutive `on_step_end` callbacks."""

from __future__ import annotations

import common
from transformers import TrainerCallback


class Clock(TrainerCallback):
    def __init__(self, clock: common.StepClock) -> None:
        self.clock = clock

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.clock.tick()
