"""KV cache for planning: preallocated once, rows and slots addressed in place."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    """Keys and values `[n_layer, max_rows, n_head, max_len, head_dim]`.

    Row r, slot s holds the K/V of the token at window slot s of sequence r. The model writes
    slots as it runs; the planner moves rows between beams with `copy_rows` / `gather_rows`.
    """

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, n_layer: int, max_rows: int, n_head: int, max_len: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> KVCache:
        shape = (n_layer, max_rows, n_head, max_len, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    @property
    def max_rows(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, rows: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store `k, v [rows, h, n, D]` at slots start..start+n; return the filled prefix views."""
        end = start + k.shape[2]
        if end > self.max_len or rows > self.max_rows:
            raise ValueError(f"cache holds {self.max_rows} rows x {self.max_len} slots; "
                             f"asked for {rows} rows up to slot {end}")
        self.k[layer, :rows, :, start:end] = k
        self.v[layer, :rows, :, start:end] = v
        return self.k[layer, :rows, :, :end], self.v[layer, :rows, :, :end]

    def tile_rows(self, rows: int, times: int, slots: slice) -> None:
        """Copy rows [0, rows) to rows [rows, rows*times) (in tiles) over `slots`."""
        src_k, src_v = self.k[:, :rows, :, slots], self.v[:, :rows, :, slots]
        for t in range(1, times):
            self.k[:, t * rows : (t + 1) * rows, :, slots] = src_k
            self.v[:, t * rows : (t + 1) * rows, :, slots] = src_v

    def gather_rows(self, index: torch.Tensor, length: int) -> None:
        """Row i becomes old row `index[i]` over slots [0, length), for i < len(index)."""
        n = len(index)
        self.k[:, :n, :, :length] = self.k[:, index, :, :length]
        self.v[:, :n, :, :length] = self.v[:, index, :, :length]
