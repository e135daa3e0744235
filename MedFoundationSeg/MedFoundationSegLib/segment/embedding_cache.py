"""A bounded, thread-safe cache of slice embeddings (least recently used first out)."""

from __future__ import annotations

from collections import OrderedDict

import torch


class EmbeddingCache:
    """LRU map slice index -> embedding tensor whose total size never exceeds ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes; got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def size_of(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def get(self, key: int) -> torch.Tensor | None:
        tensor = self._items.get(key)
        if tensor is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return tensor

    def put(self, key: int, tensor: torch.Tensor) -> bool:
        """Store (evicting least recently used entries); False when the tensor alone exceeds the budget."""
        size = self.size_of(tensor)
        if size > self.budget_bytes:
            return False
        if key in self._items:
            self.nbytes -= self.size_of(self._items.pop(key))
        while self._items and self.nbytes + size > self.budget_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= self.size_of(old)
            self.evictions += 1
        self._items[key] = tensor
        self.nbytes += size
        return True

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[int]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0
