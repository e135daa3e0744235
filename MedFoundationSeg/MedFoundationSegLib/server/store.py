"""What the engine process keeps between requests: uploaded volumes (by content id) and jobs (by job id)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict

import numpy as np

from MedFoundationSegLib.core.volume import Volume


def volume_id(meta: dict, voxels: np.ndarray) -> str:
    """A content id: the same voxels and geometry always get the same id, on any client."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    digest.update(str((voxels.dtype.str, voxels.shape)).encode("utf-8"))
    digest.update(memoryview(np.ascontiguousarray(voxels)).cast("B"))
    return digest.hexdigest()


class VolumeStore:
    """Volumes by id, least recently used out first once their voxels pass ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._volumes: OrderedDict[str, Volume] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, meta: dict, voxels: np.ndarray) -> str:
        key = volume_id(meta, voxels)
        volume = Volume(voxels, meta["spacing_mm"], meta["origin_lps_mm"], np.asarray(meta["direction"], float),
                        str(meta.get("name", "")), key=key)
        with self._lock:
            self._volumes[key] = volume
            self._volumes.move_to_end(key)
            while len(self._volumes) > 1 and self.nbytes() > self.budget_bytes:
                self._volumes.popitem(last=False)
        return key

    def get(self, key: str) -> Volume:
        with self._lock:
            if key not in self._volumes:
                raise KeyError(f"volume {key!r} is not on the engine (it was never sent, or was dropped to make "
                               "room): send it again")
            self._volumes.move_to_end(key)
            return self._volumes[key]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._volumes

    def nbytes(self) -> int:
        return sum(v.array.nbytes for v in self._volumes.values())

    def __len__(self) -> int:
        return len(self._volumes)


class JobTable:
    """Jobs by id; the oldest finished ones are forgotten past ``keep``."""

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._jobs: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._jobs[key] = job
            finished = [k for k, j in self._jobs.items() if j.done]
            for old in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[old]
        return key

    def get(self, key: str):
        with self._lock:
            if key not in self._jobs:
                raise KeyError(f"no job {key!r} on this engine")
            return self._jobs[key]
