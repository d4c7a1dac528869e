"""KV cache for planning: preallocated once, rows and slots addressed in place."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SharedPrefix:
    """Keys and values `[G, h, S, D]` of window slots [0, S) that whole groups of rows share:
    row r reads group `(r // group_rows) % G` (the planner's [E, B, W] rows: G plans of W beams).
    Attention reads them once per group instead of once per row."""

    k: torch.Tensor
    v: torch.Tensor
    group_rows: int

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def groups_of(self, rows: int) -> torch.Tensor:
        """The group of each of `rows` rows `[rows]`."""
        return torch.arange(rows, device=self.k.device) // self.group_rows % self.k.shape[0]

    def expand(self, rows: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole windows `[rows, h, S + n, D]`: each row's group prefix, then its own `k, v`."""
        group = self.groups_of(rows)
        return torch.cat([self.k[group], k], 2), torch.cat([self.v[group], v], 2)


@dataclass
class KVCache:
    """Keys and values in one tensor `kv [2, n_layer, max_rows, n_head, max_len, head_dim]`
    (`k = kv[0]`, `v = kv[1]`, each contiguous), so that a write, a tile or a gather moves keys and
    values in one copy.

    Row r, slot s holds the K/V of the token at window slot s of sequence r. The model writes
    slots as it runs; the planner moves rows between beams with `tile_rows` / `gather_rows`.
    After `share`, slots [0, shared) are no longer per row: every row reads them from the first
    row of its group (rows 0..groups-1), and writes, tiles and gathers start at slot `shared`.
    """

    kv: torch.Tensor
    shared: int = 0
    groups: int = 1
    group_rows: int = 1

    @classmethod
    def empty(cls, n_layer: int, max_rows: int, n_head: int, max_len: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> KVCache:
        return cls(torch.empty((2, n_layer, max_rows, n_head, max_len, head_dim), dtype=dtype, device=device))

    @property
    def k(self) -> torch.Tensor:
        """Keys `[n_layer, max_rows, n_head, max_len, head_dim]` (a view)."""
        return self.kv[0]

    @property
    def v(self) -> torch.Tensor:
        """Values, as `k`."""
        return self.kv[1]

    @property
    def max_rows(self) -> int:
        return self.kv.shape[2]

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def share(self, slots: int, groups: int = 1, group_rows: int = 1) -> None:
        """Declare slots [0, slots) of rows 0..groups-1 the prefix that row r shares with group
        `(r // group_rows) % groups`; `share(0)` makes every slot per row again."""
        if slots and groups > self.max_rows:
            raise ValueError(f"cache holds {self.max_rows} rows; cannot share a prefix among {groups} groups")
        self.shared, self.groups, self.group_rows = slots, groups, group_rows

    def prefix(self, layer: int) -> SharedPrefix | None:
        """The shared prefix of `layer`, or None when nothing is shared."""
        if not self.shared:
            return None
        k, v = self.kv[:, layer, : self.groups, :, : self.shared]
        return SharedPrefix(k, v, self.group_rows)

    def write(self, layer: int, start: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys and values `kv [2, rows, h, n, D]` at slots start..start+n of rows 0..rows-1;
        return the rows' own keys and values, slots [shared, start+n) (all of [0, start+n) when
        nothing is shared)."""
        rows, end = kv.shape[1], start + kv.shape[3]
        if end > self.max_len or rows > self.max_rows:
            raise ValueError(f"cache holds {self.max_rows} rows x {self.max_len} slots; "
                             f"asked for {rows} rows up to slot {end}")
        if start < self.shared:
            raise ValueError(f"slots [0, {self.shared}) are a shared prefix: cannot write slot {start}")
        self.kv[:, layer, :rows, :, start:end] = kv
        k, v = self.kv[:, layer, :rows, :, self.shared : end]
        return k, v

    def tile_rows(self, rows: int, times: int, slots: slice) -> None:
        """Copy rows [0, rows) to rows [rows, rows*times) (in tiles) over `slots`."""
        source = self.kv[:, :, :rows, :, slots]
        for t in range(1, times):
            self.kv[:, :, t * rows : (t + 1) * rows, :, slots] = source

    def gather_rows(self, index: torch.Tensor, end: int, start: int | None = None) -> None:
        """Row i becomes old row `index[i]` over slots [start, end) (start: the first unshared slot),
        for i < len(index)."""
        n, slots = len(index), slice(self.shared if start is None else start, end)
        self.kv[:, :, :n, :, slots] = self.kv[:, :, index, :, slots]
