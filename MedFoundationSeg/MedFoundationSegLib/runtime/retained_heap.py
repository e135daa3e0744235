"""Keep freed C-heap memory for the next network call instead of handing it back to the kernel (glibc only).

Why: glibc maps every allocation of 32 MB or more afresh and unmaps it when freed, and trims the heap top whenever
more than a little lies free there. A network that allocates and frees the same large activations on every call then
page-faults (and the kernel zeroes) each 4 kB again: a third of a LiteMedSAM encoder call on this project's 2-core
CPU, and more for MedLAM's 3D maps. Inside ``retained_heap()`` large blocks come from the heap and freed memory stays
there for reuse; when the outermost block ends, glibc's defaults come back and ``malloc_trim`` returns what is free,
so the process holds no more memory afterwards than before. A lingering block (``linger_s``) keeps the heap that long
after it ends, for the next call of a series (the clicks on one structure). Worker threads have their own glibc
arenas, which still map blocks of 64 MB or more afresh; the encoder runtime keeps its blocks under that (banded
TinyViT stem).

The settings are process-wide: what other threads allocate meanwhile comes from the heap too, and afterwards glibc's
sliding mmap threshold stays where it was (any ``mallopt`` call freezes it). Not used for MedLAM: its aligned 3D
blocks fragment the retained heap (peak 4.1 GB against 2.8 GB, over the 3 GB target); localization ends a lingering
hold first (``end_lingering``).

Other C libraries (macOS, Windows, musl) manage this themselves: the context is a no-op there, as it is with
``MEDFOUNDATIONSEG_RETAIN_HEAP=0`` in the environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator
from functools import lru_cache

log = logging.getLogger(__name__)

# mallopt(3) parameters and glibc's documented defaults
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024, M_MMAP_MAX: 65536}
RETAINED = {M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 * 2**20, M_MMAP_MAX: 0}

_lock = threading.Lock()
_depth = 0
_lingering = False  # a lingering block's depth is still held
_generation = 0  # which lingering block's timer may end the hold
_timer: threading.Timer | None = None  # the running timer of the hold


@lru_cache(maxsize=1)
def _glibc():
    """glibc's mallopt/malloc_trim, or None where the process runs on another C library or it is switched off."""
    if os.environ.get("MEDFOUNDATIONSEG_RETAIN_HEAP", "1") == "0":
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, malloc_trim


def available() -> bool:
    """True when ``retained_heap`` changes anything in this process."""
    return _glibc() is not None


def _apply(settings: dict[int, int]) -> None:
    mallopt, _ = _glibc()
    for parameter, value in settings.items():
        if mallopt(parameter, value) != 1:
            log.warning("mallopt(%d, %d) was refused; the heap keeps its current setting", parameter, value)


@contextlib.contextmanager
def retained_heap(linger_s: float = 0.0) -> Iterator[None]:
    """Freed memory stays in the heap while any thread is inside this block (reentrant, thread-safe), and for
    ``linger_s`` seconds after it ends: a user's clicks on one structure come seconds apart, and each reuses the heap
    the one before left (a new lingering block restarts the wait)."""
    global _depth
    if _glibc() is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _apply(RETAINED)
    try:
        yield
    finally:
        with _lock:
            if linger_s > 0:
                _linger(linger_s)
            else:
                _leave()


def _leave() -> None:
    """One block ended (called with the lock held): the defaults come back when it was the last."""
    global _depth
    _depth -= 1
    if _depth == 0:
        _apply(DEFAULTS)
        _glibc()[1](0)


def _linger(seconds: float) -> None:
    """A lingering block ended (called with the lock held): its depth is held until ``seconds`` pass with no other
    lingering block ending; at most one is held at a time."""
    global _lingering, _generation, _timer
    _generation += 1
    if _lingering:
        _leave()  # the earlier lingering block already holds one
    _lingering = True
    if _timer is not None:
        _timer.cancel()
    _timer = threading.Timer(seconds, _stop_lingering, args=(_generation,))
    _timer.daemon = True
    _timer.start()


def _stop_lingering(generation: int) -> None:
    with _lock:
        if generation == _generation:
            _release_hold()


def _release_hold() -> None:
    """Give up a lingering block's held depth, if one is held (called with the lock held)."""
    global _lingering
    if _lingering:
        _lingering = False
        _leave()


def end_lingering() -> None:
    """Stop holding the heap for a lingering block now (the defaults come back unless a block is running): before
    work that must not run on a retained heap (MedLAM's aligned 3D blocks fragment it)."""
    if _glibc() is None:
        return
    with _lock:
        if _timer is not None:
            _timer.cancel()
        _release_hold()
