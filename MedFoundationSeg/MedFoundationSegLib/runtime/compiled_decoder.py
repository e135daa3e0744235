"""The mask decoder compiled (torch.compile, inductor) in a background thread; the eager decoder answers until then.

Why: once a volume's slices are encoded, a correction spends its time in the mask decoder, once per slice its spread
walks, and compiled the decoder takes about half as long per prompt on a CPU (benchmarks/bench_decoder_precision.py
``--compile``). Compiling takes tens of seconds the first time (inductor keeps its kernels on disk, so later processes
take a few), so it runs beside the user's work, never in their way: the first slices are decoded eagerly.

Only single-prompt calls use the compiled decoder, with the shapes the warm-up compiled (one slice, a box and any
number of points, with or without a mask prompt): any other call (several prompts at once, three candidate masks)
stays eager, so no call ever waits for a recompilation. Where compiling fails (no C++ compiler for inductor, a
platform it does not support) the eager decoder stays, with one log line saying why.

Off by default: set ``MEDFOUNDATIONSEG_COMPILE_DECODER=1`` to compile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

ENVIRONMENT_SWITCH = "MEDFOUNDATIONSEG_COMPILE_DECODER"
GIL_SWITCH_INTERVAL_S = 0.0002
# The compiled decoder is used only where its warm-up masks agree with the eager decoder's (an inductor build on one
# CPU answered NaN): a larger share of differing pixels leaves the eager decoder.
MAX_MASKS_DIFFERING = 0.01
_ONE_AT_A_TIME = threading.Lock()  # dynamo's compiler is not made for several threads compiling at once


def compile_wanted(device: torch.device) -> bool:
    """Compile on CPUs when switched on (on a GPU the decoder is already a small share of a correction). Off by
    default: while a compilation runs, its C++ builds take the CPU from the user's clicks (docs/benchmarks.md)."""
    return device.type == "cpu" and os.environ.get(ENVIRONMENT_SWITCH, "0") == "1"


@contextlib.contextmanager
def _quick_gil_handover(interval_s: float = GIL_SWITCH_INTERVAL_S):
    """Python's thread switch interval shortened while compiling: the compiler holds the GIL for long stretches of
    Python, and the user's decodes (hundreds of torch calls, each taking the GIL back) would wait up to the default
    5 ms at every call."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _masks_differing(compiled_logits, eager_logits) -> float:
    """The share of mask pixels (logit > 0) on which the compiled decoder's warm-up answers differ from the eager
    decoder's on the same inputs, a logit that is not finite counting as differing; 0 where the warm-up returns no
    answers."""
    if not compiled_logits:
        return 0.0
    return max(float((((a > 0) != (b > 0)) | ~torch.isfinite(a)).float().mean())
               for a, b in zip(compiled_logits, eager_logits))


class CompiledDecoder:
    """Holds the eager decoder and, once the background compilation has finished, its compiled twin.

    ``warm_up(decoder)`` runs ``decoder`` on the prompt shapes it should serve, under the same autocast and inference
    mode as the real calls (dynamo compiles per context), and returns its low-res logits, which the eager decoder
    must reproduce on the same inputs (``MAX_MASKS_DIFFERING``). ``state``: "off", "compiling", "ready" or
    "failed: why".
    """

    def __init__(self, decoder: nn.Module, warm_up: Callable[[nn.Module], list[torch.Tensor]], *,
                 enabled: bool):
        self.eager = decoder
        self.state = "idle" if enabled else "off"
        self.seconds = 0.0  # wall time the compilation and warm-up took
        self.use_compiled = True  # False: answer eagerly even when compiled (benchmarks compare the two)
        self._warm_up = warm_up
        self._compiled: nn.Module | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Begin compiling in a daemon thread (once)."""
        with self._start_lock:
            if self.state != "idle":
                return
            self.state = "compiling"
            self._thread = threading.Thread(target=self._compile, name="mask-decoder-compile", daemon=True)
            self._thread.start()

    def wait(self, timeout_s: float | None = None) -> str:
        """Wait for the compilation (benchmarks, tests); returns ``state``."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.state

    def for_call(self, prompts: int, multimask: bool, exact: bool) -> nn.Module:
        """The decoder for one call: compiled for a single prompt in the fast precision once ready, else eager."""
        self.start()
        if self._compiled is not None and self.use_compiled and prompts == 1 and not multimask and not exact:
            return self._compiled
        return self.eager

    def _compile(self) -> None:
        start = time.perf_counter()
        try:
            with _ONE_AT_A_TIME, _quick_gil_handover():
                compiled = torch.compile(self.eager, dynamic=None)
                answers = self._warm_up(compiled)
                differing = _masks_differing(answers, self._warm_up(self.eager))
                if differing > MAX_MASKS_DIFFERING:
                    raise RuntimeError(f"its masks differ from the eager decoder's on {differing:.1%} of the pixels")
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager decoder, which always works
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.state = f"failed: {reason[:200]}"
            log.warning("the mask decoder stays uncompiled (%s)", self.state)
            return
        self.seconds = time.perf_counter() - start
        self._compiled = compiled
        self.state = "ready"
        log.info("mask decoder compiled in %.1f s", self.seconds)
