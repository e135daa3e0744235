"""Progress reporting and cancellation shared by every long operation (CLI, batch, Slicer worker).

A long function takes ``progress(fraction, message)`` and ``cancelled() -> bool`` and calls ``check(cancelled)``
between units of work (slices, cases), so Cancel stops at the next clean boundary and never leaves half a result.

Slices are shown as they are finished the same way: code that accepts a slice's mask calls ``show_slice``; it reaches
the sink the caller installed with ``slices_to`` (the engine's job preview) or nothing. Why a context variable rather
than one more argument through every propagation function: only the engine's job runner listens, and the slice loops
sit several calls deep under functions whose signatures are arrays in, arrays out.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import numpy as np

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]
SliceSink = Callable[[int, np.ndarray], None]  # (slice index along the action's axis, mask in that slice's view)

_slice_sink: contextvars.ContextVar[SliceSink | None] = contextvars.ContextVar("slice_sink", default=None)


class Cancelled(Exception):
    """The user cancelled; whatever was already written stays valid."""


def check(cancelled: CancelCheck | None, what: str = "operation") -> None:
    if cancelled is not None and cancelled():
        raise Cancelled(f"{what} cancelled")


def report(progress: ProgressCallback | None, fraction: float, message: str = "") -> None:
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A callback for a sub-step that fills [start, stop] of the parent's bar."""
    if progress is None:
        return None
    return lambda fraction, message="": report(progress, start + (stop - start) * fraction, message)


def show_slice(index: int, mask_hw: np.ndarray) -> None:
    """Hand one finished slice to the sink of the running job, if one listens."""
    sink = _slice_sink.get()
    if sink is not None:
        sink(int(index), mask_hw)


@contextlib.contextmanager
def slices_to(sink: SliceSink | None) -> Iterator[None]:
    """Send every ``show_slice`` of this thread to ``sink`` until the block ends (None: to nobody)."""
    token = _slice_sink.set(sink)
    try:
        yield
    finally:
        _slice_sink.reset(token)
