"""The training allocator settings (llm_engineering/training/heap.py) do what they are for on this glibc, and are undone:
inside, a large block comes from the heap, not a fresh mmap; after, glibc maps large blocks again. Fails when a glibc
upgrade changes what mallopt(3) does with them. Checked in a fresh process: in one that has trained before, a large
block can come from memory the heap already holds (as glibc does after any free), whatever the settings."""

import ctypes
import subprocess
import sys

import torch

from llm_engineering.training.heap import glibc, heap_kept


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def mapped_bytes() -> int:
    libc = glibc()
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


def mapped_while_holding(megabytes: int) -> int:
    """How many more bytes glibc has mmapped while a tensor of that size is alive."""
    before = mapped_bytes()
    block = torch.empty(megabytes * 2**20, dtype=torch.uint8)
    during = mapped_bytes()
    del block
    return during - before


def in_a_fresh_process(check) -> None:
    done = subprocess.run([sys.executable, "-c", f"from tests.test_heap import {check.__name__}; {check.__name__}()"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def large_blocks_come_from_the_heap_while_training_and_from_mmap_again_after():
    assert glibc() is not None  # Debian's glibc on this machine and in the Docker image
    assert mapped_while_holding(64) >= 64 * 2**20  # glibc's default: a fresh mapping per large tensor
    with heap_kept():
        assert mapped_while_holding(64) == 0
        assert mapped_while_holding(64) == 0  # the freed block is reused, again without a mapping
    assert mapped_while_holding(64) >= 64 * 2**20  # defaults restored for the steps after training


def off_the_cpu_nothing_changes():
    with heap_kept(on_cpu=False):
        assert mapped_while_holding(64) >= 64 * 2**20


def test_large_blocks_come_from_the_heap_while_training_and_from_mmap_again_after():
    in_a_fresh_process(large_blocks_come_from_the_heap_while_training_and_from_mmap_again_after)


def test_off_the_cpu_nothing_changes():
    in_a_fresh_process(off_the_cpu_nothing_changes)
