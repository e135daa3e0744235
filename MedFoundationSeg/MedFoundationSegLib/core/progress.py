"""Progress reporting and cancellation shared by every long operation (CLI, batch, Slicer worker).

A long function takes ``progress(fraction, message)`` and ``cancelled() -> bool`` and calls ``check(cancelled)``
between units of work (slices, cases), so Cancel stops at the next clean boundary and never leaves half a result.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


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
