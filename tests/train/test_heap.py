"""heap.retained: freed blocks stay in the process while training runs, and go back after."""

import os

import pytest
import torch

from prefloop.train import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc malloc only")

MB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def given_back() -> int:
    """Allocate 64 MB in 4 MB blocks (each under glibc's mmap ceiling), touch them, free them:
    the bytes the process gives back when they are freed."""
    blocks = [torch.ones(MB) for _ in range(16)]  # float32: 4 MB each
    peak = rss()
    del blocks
    return peak - rss()


def test_freed_memory_is_kept_within_and_returned_after() -> None:
    with heap.retained() as on:
        assert on
        with heap.retained():  # nested (a training run inside another's process): one setting
            pass
        assert given_back() < 16 * MB  # still inside the outer block: freed blocks stay
        held = rss()
    assert held - rss() > 48 * MB  # the outermost exit trims the heap: training's freed
    # memory goes back to the system when the run ends


def test_disabled_is_a_no_op() -> None:
    with heap.retained(enabled=False) as on:
        assert not on
