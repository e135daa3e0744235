"""The fastest a network can run here: its matrix work (FLOPs) against this CPU's measured dense-GEMM rate.

Why: when a time target lies below this bound, no kernel tuning reaches it; only less work (fewer points, patches,
scales or slices) or a faster precision or device does. The FLOPs are counted by torch's FlopCounterMode (convolutions,
matrix products and attention, 2 per multiply-add; element-wise work is not counted, so the bound is optimistic), on
meta tensors where the caller passes them, which costs no compute.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def gflop(call) -> float:
    """GFLOP of the matrix work that ``call()`` dispatches."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 1e9


def gemm_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 2.0) -> float:
    """Best observed rate of a square ``size`` matrix product in ``dtype`` over about ``seconds``, in GFLOP/s, with
    torch's current thread count: an upper bound for what convolutions and attention reach on this machine."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    with torch.inference_mode():
        torch.mm(a, b)  # first call: kernel selection, page faults
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def bound_line(what: str, work_gflop: float, rate_gflops: float, dtype: torch.dtype) -> str:
    seconds = work_gflop / rate_gflops
    return (f"compute bound: {what} is {work_gflop:.1f} GFLOP of matrix work; this CPU's dense {str(dtype)[6:]} GEMM "
            f"peaks at {rate_gflops:.0f} GFLOP/s with {torch.get_num_threads()} threads, so it takes at least "
            f"{seconds:.3f} s")
