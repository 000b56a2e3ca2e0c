"""glibc's allocator kept from handing large blocks back to the kernel while a model trains on the CPU.

Every training step allocates and frees the same large tensors (logits, their gradients, TRL's LM-head tiles: tens to
hundreds of MB). glibc serves each one with a fresh mmap and unmaps it on free, so every step pays the kernel to
fault in and zero those pages again: 12 DPO steps on the tiny test model spent 28 of their 70 seconds in the
kernel. With mmap off and the heap's top kept, freed blocks are reused. PyTorch's CPU tuning guide recommends an
allocator that keeps its memory (jemalloc, tcmalloc) for the same reason; this gets most of it from the one already
loaded, through glibc's public mallopt(3). The settings are restored and the kept memory returned (malloc_trim) when
training ends. Used by preference training (DPO, ORPO), whose TRL LM-head tiles are what it helps: 1.36x per DPO step
on the embedded model, 1.78x on the suite's tiny one (bench/heap_kept.py); SFT's own loss allocates little, and
measured no faster with it (bench/sft_speed.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h) and glibc's defaults for the ones set here
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024, M_MMAP_MAX: 65536}
KEPT = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 * 2**20}


def glibc():
    """The process's C library if it is glibc (mallopt and malloc_trim), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


@contextlib.contextmanager
def heap_kept(on_cpu: bool = True):
    """Inside: large blocks come from the heap and stay there between steps. A no-op off glibc or off the CPU (CUDA
    tensors have their own caching allocator)."""
    libc = glibc() if on_cpu else None
    if libc is None or not all(libc.mallopt(param, value) for param, value in KEPT.items()):
        if libc is not None:
            logger.debug("mallopt refused the kept-heap settings; training with glibc's defaults")
            _restore(libc)
        yield
        return
    try:
        yield
    finally:
        _restore(libc)


def _restore(libc) -> None:
    for param, value in DEFAULTS.items():
        libc.mallopt(param, value)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)  # hand the kept memory back for the steps that follow
