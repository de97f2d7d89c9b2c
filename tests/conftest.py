"""Shared fixtures: a locally trained tokenizer and tiny models of each family (no network)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# pytest -n 2 runs two workers on two cores: one torch thread each, or their OpenMP
# barriers wait on each other's descheduled threads (8-10x slower on small models).
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = [
    "the",
    "movie",
    "was",
    "great",
    "bad",
    "terrible",
    "wonderful",
    "blender",
    "headphones",
    "i",
    "loved",
    "hated",
    "it",
    "this",
    "product",
    "works",
    "fine",
    "broke",
    "after",
    "a",
    "week",
    "and",
    "but",
    "really",
    "quite",
    "sound",
    "battery",
    "plot",
    "actors",
    "boring",
]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) for _ in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test, whatever imported torch first (OMP_NUM_THREADS above only
    reaches a torch imported after this file)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def transformers_sdpa():
    """Whatever a test registers as transformers' "sdpa" attention (a bf16 CPU training run
    installs prefloop.models.attention) is undone after it: no test depends on test order."""
    from transformers import AttentionInterface

    mapping = AttentionInterface._global_mapping
    before = mapping["sdpa"]
    yield
    mapping["sdpa"] = before


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return _texts(400)


@pytest.fixture(scope="session")
def tokenizer(texts):
    from prefloop.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size=320)


@pytest.fixture(scope="session")
def make_model(tokenizer) -> Callable:
    """make_model(family, **size) -> a fresh tiny causal LM (seeded, dropout off)."""
    from prefloop.models.lm import build_model

    def make(family: str = "gpt2", **size):
        size = {"n_layer": 2, "n_embd": 64, "n_head": 4, "context": 64, **size}
        return build_model(family, tokenizer, **size)

    return make
