"""KV cache for planning: preallocated once, rows and slots addressed in place."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def prefix_rows(rows: int, groups: int, group_rows: int, device: torch.device | str) -> torch.Tensor:
    """The row holding each of `rows` rows' shared prefix `[rows]` when no explicit table is given:
    `(r // group_rows) % groups` (the planner's [E, B, W] rows: `groups` plans of `group_rows` beams)."""
    return torch.arange(rows, device=device) // group_rows % groups


@dataclass
class SharedPrefix:
    """Keys and values `[G, h, S, D]` of window slots [0, S) that rows share: row r reads prefix
    `(r // group_rows) % G` (the planner's [E, B, W] rows: G plans of W beams), or `rows[r]` when
    the table `rows [R]` (int64, values in [0, G)) is given (the likelihood search: each surviving
    beam reads the window of the beam it descends from, whatever the order survivors come in).
    Attention reads a prefix once per group of rows instead of once per row where it can."""

    k: torch.Tensor
    v: torch.Tensor
    group_rows: int
    rows: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def groups_of(self, rows: int) -> torch.Tensor:
        """The prefix (group) each of `rows` rows reads `[rows]`: the table `rows` when given."""
        if self.rows is not None:
            if self.rows.shape != (rows,):
                raise ValueError(f"the shared prefix's row table is {tuple(self.rows.shape)}, asked for {rows} rows")
            return self.rows
        return prefix_rows(rows, self.k.shape[0], self.group_rows, self.k.device)

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
    After `share`, slots [0, shared) are no longer per row: every row reads them from one of rows
    0..groups-1 (by its group, or by the table `prefix_rows`), and writes, tiles and gathers start
    at slot `shared`.

    A goal-conditioned model's goals are a segment apart (`set_goal`): keys and values
    `goal_kv [2, n_layer, G, h, O, D]` that every row's queries see, row r reading goal
    `(r // goal_group_rows) % G`, or `goal_rows[r]` with a table (`read_goals`). They hold no window
    slot, so sharing, tiling and gathering rows never move them: rows reach them through the mapping.
    """

    kv: torch.Tensor
    shared: int = 0
    groups: int = 1
    group_rows: int = 1
    prefix_rows: torch.Tensor | None = None
    goal_kv: torch.Tensor | None = None
    goal_group_rows: int = 1
    goal_rows: torch.Tensor | None = None

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

    def share(self, slots: int, groups: int = 1, group_rows: int = 1, rows: torch.Tensor | None = None) -> None:
        """Declare slots [0, slots) of rows 0..groups-1 the prefixes that the rows read: row r reads
        the prefix of row `(r // group_rows) % groups`, or of row `rows[r]` when the table `rows`
        (int64 `[R]` on the cache's device, values in [0, groups)) is given; `share(0)` makes every
        slot per row again. The table is kept, not copied (no host synchronization), and its values
        are trusted, like `key_start`'s: the kernels read row `rows[r]` without checking it."""
        if slots and groups > self.max_rows:
            raise ValueError(f"cache holds {self.max_rows} rows; cannot share a prefix among {groups} groups")
        if slots and rows is not None and (not isinstance(rows, torch.Tensor) or rows.dtype != torch.long
                                           or rows.dim() != 1 or rows.device != self.kv.device
                                           or len(rows) > self.max_rows):
            what = (f"{rows.dtype} {tuple(rows.shape)} on {rows.device}" if isinstance(rows, torch.Tensor)
                    else type(rows).__name__)
            raise ValueError(f"share: rows must be an int64 [R] tensor (R <= {self.max_rows}) on {self.kv.device}, "
                             f"got {what}")
        self.shared, self.groups, self.group_rows = slots, groups, group_rows
        self.prefix_rows = rows if slots else None

    def set_goal(self, kv: torch.Tensor, group_rows: int = 1, rows: torch.Tensor | None = None) -> None:
        """Hold the goals' keys and values `kv [2, n_layer, G, h, O, D]` (the model's `encode_goal`)
        and how rows read them (`read_goals`)."""
        if kv.dim() != 6 or kv.shape[:2] != self.kv.shape[:2] or kv.shape[3] != self.kv.shape[3] \
                or kv.shape[5] != self.kv.shape[5] or kv.device != self.kv.device:
            raise ValueError(f"set_goal: goal keys and values must be [2, n_layer, G, h, O, D] matching the cache "
                             f"{tuple(self.kv.shape)} on {self.kv.device}, got {tuple(kv.shape)} on {kv.device}")
        self.goal_kv = kv
        self.read_goals(group_rows, rows)

    def read_goals(self, group_rows: int = 1, rows: torch.Tensor | None = None) -> None:
        """Row r reads goal `(r // group_rows) % G`, or `rows[r]` with the table `rows` (int64 `[R]`
        on the cache's device, values trusted to lie in [0, G), as the shared prefix's table)."""
        if rows is not None and (not isinstance(rows, torch.Tensor) or rows.dtype != torch.long or rows.dim() != 1
                                 or rows.device != self.kv.device):
            raise ValueError(f"read_goals: rows must be an int64 [R] tensor on {self.kv.device}")
        if group_rows < 1:
            raise ValueError(f"read_goals: group_rows must be >= 1, got {group_rows}")
        self.goal_group_rows, self.goal_rows = group_rows, rows

    def goal(self, layer: int, rows: int) -> SharedPrefix | None:
        """The goal segment of `layer` as `rows` rows read it (keys first, visible to every query),
        or None when the cache holds no goal."""
        if self.goal_kv is None:
            return None
        table = None if self.goal_rows is None else self.goal_rows[:rows]
        return SharedPrefix(self.goal_kv[0, layer], self.goal_kv[1, layer], self.goal_group_rows, table)

    def prefix(self, layer: int) -> SharedPrefix | None:
        """The shared prefix of `layer`, or None when nothing is shared."""
        if not self.shared:
            return None
        k, v = self.kv[:, layer, : self.groups, :, : self.shared]
        return SharedPrefix(k, v, self.group_rows, self.prefix_rows)

    def materialize_prefix(self, rows: int) -> None:
        """Copy each of rows 0..rows-1's shared prefix (slots [0, shared) of the row it reads them
        from) into its own slots [0, shared), then `share(0)`: every slot is per row again. The
        prefixes are gathered before any is written (rows 0..groups-1 hold them and are among the rows)."""
        if not self.shared:
            return
        if self.prefix_rows is not None:
            source = self.prefix_rows[:rows]
            if len(source) != rows:
                raise ValueError(f"materialize_prefix: the row table holds {len(self.prefix_rows)} rows, "
                                 f"asked for {rows}")
        else:
            source = prefix_rows(rows, self.groups, self.group_rows, self.kv.device)
        self._gather(source, slice(0, self.shared))
        self.share(0)

    def gather_windows(self, prefix_rows: torch.Tensor, rows: torch.Tensor, end: int) -> None:
        """Rows 0..D-1 become the windows, slots [0, end), of rows `rows [D]`: the shared prefix
        (slots [0, shared)) as rows `prefix_rows [D]` hold it, the rest from the rows themselves;
        then `share(0)`. Every source is read before its slots are written."""
        if not self.shared <= end <= self.max_len:
            raise ValueError(f"gather_windows: windows end at slot {end}, before the shared {self.shared} slots "
                             f"or past the cache's {self.max_len}")
        self._gather(prefix_rows, slice(0, self.shared))  # slots [0, shared) of the prefix rows: read, then written
        self._gather(rows, slice(self.shared, end))  # the rows' own slots, which that did not write
        self.share(0)

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
        self._gather(index, slice(self.shared if start is None else start, end))

    def _gather(self, index: torch.Tensor, slots: slice) -> None:
        """Rows [0, len(index)) become rows `index` over `slots`: keys, then values, a layer at a
        time through one buffer (the sources are read before their rows are written; a block at a
        time stays in the CPU's caches, where one gather of everything takes twice as long)."""
        buffer = None
        for kv in range(2):
            for layer in range(self.kv.shape[1]):  # (indexing, not iterating: in-place writes to its views are allowed)
                source = self.kv[kv, layer, :, :, slots]
                reuse = buffer is not None and not source.requires_grad  # out= has no autograd
                buffer = torch.index_select(source, 0, index, out=buffer) if reuse \
                    else torch.index_select(source, 0, index)
                self.kv[kv, layer, : len(index), :, slots] = buffer
