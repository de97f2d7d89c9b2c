"""Freed memory stays in the process while a CPU training run lasts (glibc's malloc).

glibc hands big freed blocks back to the kernel: a chunk over its mmap threshold (128 KB,
rising with use up to 32 MB) is unmapped when freed, and a free top of the heap over the trim
threshold is trimmed. A training step frees and reallocates the same activation- and
gradient-sized buffers every step, so each step can fault them back in. On a virtual machine
that reports freed guest memory to its host (Firecracker and virtio free page reporting: the CI
and benchmark hosts here), touching such memory again costs a host fault per page: in a 21M bf16
reward step the embedding gradient's 8 MB zero fill took 8.6 ms instead of 0.25, and in
alternated process pairs the step was faster with memory kept in 14 of 17 (docs/benchmarks.md).

Within `retained()`, blocks up to 32 MB come from the heap and the heap is not trimmed: freed
memory is reused by the next step without faults. Peak memory is that of the step (the same
buffers are reused); on exit glibc's default thresholds come back and the heap is trimmed, so
the process returns what training no longer holds (glibc's own raising of the mmap threshold
with use stays off afterwards: setting a threshold turns it off). A no-op where the C library
is not glibc.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_GLIBC_DEFAULT = 128 * 1024  # both thresholds' defaults
_MMAP_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit
_TRIM_NEVER = 2**31 - 1

_lock = threading.Lock()
_depth = 0


def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def retained(enabled: bool = True) -> Iterator[bool]:
    """Within: freed memory up to 32 MB a block stays in the process (nested uses share one
    setting; the outermost exit restores glibc's defaults and trims). Yields whether it is on."""
    global _depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
                libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
                libc.malloc_trim(0)
