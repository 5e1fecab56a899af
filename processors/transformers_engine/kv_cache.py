"""The KV cache: one preallocated row ("slot") per running sequence, kept compact.

Decoding sequences always occupy slots 0..B-1, so a decode step attends over a plain view of the
cache, `keys[:B, :, :length]`, with no gather; a sequence still prefilling in chunks sits in slot
B. When a sequence leaves, another moves into its slot (one copy of that sequence's keys and
values, once), as the scheduler says.
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
        shape = (num_slots, num_kv_heads, max_len, head_dim)  # [S, Hkv, L, D]
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_len = max_len
        self.device = torch.device(device)

    @staticmethod
    def bytes_per_slot(
        num_layers: int, num_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * max_len * head_dim * element

    def write_decode(
        self,
        layer: int,
        rows: torch.Tensor,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """One token per slot: k, v [B, Hkv, D] at `positions` [B] of slots `rows` [B]."""
        self.keys[layer][rows, :, positions] = k
        self.values[layer][rows, :, positions] = v

    def write_chunk(
        self, layer: int, slot: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """A prompt chunk: k, v [T, Hkv, D] at positions start..start+T-1 of one slot."""
        end = start + k.shape[0]
        self.keys[layer][slot, :, start:end] = k.transpose(0, 1)
        self.values[layer][slot, :, start:end] = v.transpose(0, 1)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's first `length` positions from one slot to another."""
        for k_cache, v_cache in zip(self.keys, self.values, strict=True):
            k_cache[target, :, :length] = k_cache[source, :, :length]
            v_cache[target, :, :length] = v_cache[source, :, :length]
