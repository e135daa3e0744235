"""Error types shared across the engine: each names the problem in its message, on one line."""

from __future__ import annotations


class WeightsError(RuntimeError):
    """Base class: a weight file could not be found, fetched or trusted."""


class MissingWeightsError(WeightsError):
    pass


class ChecksumError(WeightsError):
    pass


class DownloadError(WeightsError):
    pass
