"""retained_heap: large freed blocks are reused inside the block, and the defaults (and the memory) come back after."""

from __future__ import annotations

import platform
import resource
import statistics
import subprocess
import sys

import torch
from MedFoundationSegLib.runtime import retained_heap as heap

BLOCK_BYTES = 64 * 2**20  # above glibc's 32 MB ceiling for serving a block from the heap


def page_faults_per_call(calls: int = 6) -> int:
    """Median minor page faults per identical "network call" (64 MB tensors made and freed; torch, not numpy, which
    asks for huge pages and hides the effect) over the calls after the first two. The heap settles after a few calls
    (the aligned blocks fragment it until the free space fits the pattern), and now and then one call still faults a
    block in again; the median is what a long run of calls costs."""
    def call():
        x = torch.ones(BLOCK_BYTES // 4)
        y = x * 2
        z = torch.relu(y + x)
        del x, y, z

    counts = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return int(statistics.median(counts[2:]))


def resident_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize() / 2**20


def test_large_blocks_are_reused_inside_and_mapped_afresh_outside():
    """Run in a fresh interpreter: glibc's malloc settings are process-wide, and what earlier tests allocated and
    tuned in this process would decide the page-fault counts instead of the context under test."""
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "large blocks: ok" in run.stdout


def check_large_blocks() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert heap.available() == on_glibc
    if not on_glibc:  # other C libraries manage this themselves: the context must be a harmless no-op
        with heap.retained_heap():
            return
    pages = BLOCK_BYTES // resource.getpagesize()
    resident_before = resident_mib()
    assert page_faults_per_call() > 2 * pages  # glibc default: unmapped on free, faulted in again on every call
    with heap.retained_heap():
        with heap.retained_heap():  # reentrant: the inner exit keeps the outer block's setting
            page_faults_per_call(3)
        assert page_faults_per_call(10) < pages // 10
        assert resident_mib() > resident_before + 3 * BLOCK_BYTES / 2**20  # kept...
    assert heap._depth == 0
    assert resident_mib() < resident_before + BLOCK_BYTES / 2**20  # ...and given back at the end
    assert page_faults_per_call() > pages // 2  # large blocks mapped afresh again
    print("large blocks: ok")


def test_a_lingering_block_keeps_the_heap_until_its_wait_has_passed():
    """In a fresh interpreter, as above."""
    run = subprocess.run([sys.executable, __file__, "linger"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "lingering: ok" in run.stdout


def check_lingering() -> None:
    """A lingering block keeps the heap after it ends, for the next call of a series; a second one restarts the wait;
    when it has passed, the defaults and the memory come back."""
    import time

    if not heap.available():
        return
    pages = BLOCK_BYTES // resource.getpagesize()
    resident_before = resident_mib()
    assert page_faults_per_call() > 2 * pages
    with heap.retained_heap(linger_s=2.0):
        page_faults_per_call(6)
    first_end = time.monotonic()
    assert heap._depth == 1
    kept = page_faults_per_call(10)
    assert kept < pages // 10, f"{kept} page faults per call after a lingering block ({pages} pages a block)"
    assert resident_mib() > resident_before + 3 * BLOCK_BYTES / 2**20
    time.sleep(max(0.0, first_end + 1.2 - time.monotonic()))
    with heap.retained_heap(linger_s=2.0):  # a second block of the series restarts the wait
        page_faults_per_call(3)
    second_end = time.monotonic()
    time.sleep(max(0.0, first_end + 2.4 - time.monotonic()))
    assert heap._depth == 1  # past the first block's wait, within the second's
    time.sleep(max(0.0, second_end + 2.5 - time.monotonic()))
    assert heap._depth == 0
    assert resident_mib() < resident_before + BLOCK_BYTES / 2**20
    with heap.retained_heap(linger_s=30.0):  # ended early, before work that must not run on a retained heap
        page_faults_per_call(3)
    assert heap._depth == 1
    heap.end_lingering()
    assert heap._depth == 0
    assert resident_mib() < resident_before + BLOCK_BYTES / 2**20
    print("lingering: ok")


def test_environment_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("MEDFOUNDATIONSEG_RETAIN_HEAP", "0")
    heap._glibc.cache_clear()
    try:
        assert not heap.available()
        before = heap._depth  # a lingering block of an earlier test may hold one
        with heap.retained_heap():
            assert heap._depth == before
    finally:
        monkeypatch.delenv("MEDFOUNDATIONSEG_RETAIN_HEAP")
        heap._glibc.cache_clear()


if __name__ == "__main__":
    check_lingering() if sys.argv[1:] == ["linger"] else check_large_blocks()
