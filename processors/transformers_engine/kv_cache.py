"""The KV cache: one preallocated row ("slot") per running sequence, kept compact.

Running sequences always occupy slots 0..B-1, so a decode step attends over a plain view of the
cache, `keys[:B, :, :length]`, with no gather. When a sequence leaves, the last one moves into
its slot (one copy of that sequence's keys and values, once).

The object is handed to a transformers model as `past_key_values`: modern decoder models call
only `update(keys, values, layer_idx)`, after rotary embeddings are applied from the explicit
`position_ids`, and the 4D attention mask we pass is used as given.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_slots, num_kv_heads, max_len, head_dim)  # [S, H, L, D]
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_len = max_len
        self._rows: slice | torch.Tensor = slice(0, 0)
        self._positions: torch.Tensor | None = None
        self._view_len = 0

    @staticmethod
    def bytes_per_slot(
        num_layers: int, num_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * max_len * head_dim * element

    def prepare_prefill(self, slot: int, length: int) -> None:
        """The next forward writes positions 0..length-1 of one slot and attends over them."""
        self._rows = slice(slot, slot + 1)
        self._positions = None
        self._view_len = length

    def prepare_decode(self, positions: torch.Tensor, view_len: int) -> None:
        """The next forward writes one token per slot 0..B-1 at `positions` [B]."""
        self._rows = slice(0, positions.shape[0])
        self._positions = positions
        self._view_len = view_len

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = self.keys[layer_idx], self.values[layer_idx]
        if self._positions is None:  # prefill: keys [1, H, T, D]
            length = keys.shape[2]
            k_cache[self._rows, :, :length] = keys
            v_cache[self._rows, :, :length] = values
        else:  # decode: keys [B, H, 1, D], one position per row
            rows = torch.arange(keys.shape[0], device=keys.device)
            k_cache[rows, :, self._positions] = keys[:, :, 0]
            v_cache[rows, :, self._positions] = values[:, :, 0]
        view = (self._rows, slice(None), slice(0, self._view_len))
        return k_cache[view], v_cache[view]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's first `length` positions from one slot to another."""
        for k_cache, v_cache in zip(self.keys, self.values, strict=True):
            k_cache[target, :, :length] = k_cache[source, :, :length]
            v_cache[target, :, :length] = v_cache[source, :, :length]
