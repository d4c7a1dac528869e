"""Per-dimension discretization of transitions into N bins, plus the stop token N.

A `Discretizer` is nothing but its thresholds `[N+1, T]` (bin i of dimension j spans
`thr[i, j] .. thr[i+1, j]`), so anyone can build one directly, save it, or fit it to data with
the authors' quantile rule or a uniform grid.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from tt.io import atomic_write


class Discretizer:
    """Maps continuous transitions `[..., T]` to tokens in `[0, N)` and back.

    Token `N` is the stop token (the episode has ended); it has no value, so `reconstruct`
    turns it into NaN and `is_stop` finds it: callers decide what a stop token means for them.
    """

    def __init__(self, thresholds: np.ndarray):
        thresholds = np.ascontiguousarray(thresholds, dtype=np.float64)  # safetensors saves the C-order buffer
        if thresholds.ndim != 2 or thresholds.shape[0] < 2:
            raise ValueError(f"thresholds must be [N+1, T] with N >= 1, got shape {thresholds.shape}")
        if not np.isfinite(thresholds).all():
            raise ValueError("thresholds contain NaN or infinite values")
        if (np.diff(thresholds, axis=0) < 0).any():
            raise ValueError("thresholds must be non-decreasing along the bin axis")
        self.thresholds = thresholds

    @property
    def n_bins(self) -> int:
        return self.thresholds.shape[0] - 1

    @property
    def stop_token(self) -> int:
        return self.n_bins

    @property
    def transition_dim(self) -> int:
        return self.thresholds.shape[1]

    @property
    def midpoints(self) -> np.ndarray:
        """Bin centres `[N, T]`: the value a token stands for."""
        return (self.thresholds[:-1] + self.thresholds[1:]) / 2.0

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, data: np.ndarray, n_bins: int = 100, kind: str = "quantile") -> Discretizer:
        """Fit thresholds to real transitions `data [n, T]` with the `quantile` or `uniform` rule."""
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(f"data must be a non-empty [n, T] array, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise ValueError("data contain NaN or infinite values; clean them before fitting")
        if kind == "quantile":
            return cls(quantile_thresholds(data, n_bins))
        if kind == "uniform":
            lo, hi = data.min(axis=0), data.max(axis=0)
            return cls(lo + (hi - lo) * np.linspace(0.0, 1.0, n_bins + 1)[:, None])
        raise ValueError(f"unknown discretizer kind {kind!r}; expected 'quantile' or 'uniform'")

    # ------------------------------------------------------------------ mapping

    def _columns(self, x_dim: int, columns: slice | None) -> np.ndarray:
        thr = self.thresholds if columns is None else self.thresholds[:, columns]
        if thr.shape[1] != x_dim:
            raise ValueError(f"expected {thr.shape[1]} dimensions, got {x_dim}")
        return thr

    def discretize(self, x: np.ndarray, columns: slice | None = None) -> np.ndarray:
        """Index of the largest threshold <= x per dimension, clipped to [0, N-1] (int64)."""
        x = np.asarray(x, dtype=np.float64)
        thr = self._columns(x.shape[-1], columns)
        if np.isnan(x).any():
            raise ValueError("cannot discretize NaN values")
        flat = x.reshape(-1, x.shape[-1])
        tokens = np.empty(flat.shape, dtype=np.int64)
        for j in range(flat.shape[1]):
            tokens[:, j] = np.searchsorted(thr[:, j], flat[:, j], side="right") - 1
        return np.clip(tokens, 0, self.n_bins - 1).reshape(x.shape)

    def reconstruct(self, tokens: np.ndarray | torch.Tensor, columns: slice | None = None) -> np.ndarray:
        """Bin midpoints of `tokens [..., D]`; stop tokens become NaN, anything else out of range raises."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens)
        mids = self._columns(tokens.shape[-1], columns)
        mids = (mids[:-1] + mids[1:]) / 2.0
        if tokens.size and (tokens.min() < 0 or tokens.max() > self.n_bins):
            raise ValueError(f"tokens out of range [0, {self.n_bins}]: ({tokens.min()}, {tokens.max()})")
        stop = tokens == self.n_bins
        safe = np.where(stop, 0, tokens)
        values = np.take_along_axis(mids, safe.reshape(-1, tokens.shape[-1]), axis=0).reshape(tokens.shape)
        return np.where(stop, np.nan, values)

    def is_stop(self, tokens: np.ndarray | torch.Tensor):
        return tokens == self.n_bins

    # ------------------------------------------------------------------ persistence

    def save(self, path: str) -> None:
        from safetensors.numpy import save_file

        with atomic_write(path) as tmp:
            save_file({"thresholds": self.thresholds}, tmp, metadata={"format": "tt.Discretizer/1"})

    @classmethod
    def load(cls, path: str) -> Discretizer:
        from safetensors.numpy import load_file

        if not os.path.exists(path):
            raise FileNotFoundError(f"no discretizer at {path}")
        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises several types for damaged files
            raise ValueError(f"corrupt discretizer file {path}: {e}") from e
        if "thresholds" not in tensors:
            raise ValueError(f"{path} holds no 'thresholds' tensor; not a tt discretizer")
        return cls(tensors["thresholds"])

    def __repr__(self) -> str:
        return f"Discretizer(n_bins={self.n_bins}, transition_dim={self.transition_dim})"


def quantile_thresholds(data: np.ndarray, n_bins: int) -> np.ndarray:
    """The authors' quantile thresholds `[N+1, T]`.

    Their rule: sort each column, take every ceil(n/N)-th sorted value starting with the
    minimum, append the column maximum. It yields exactly N+1 thresholds only when it lands
    on N values (e.g. n a multiple of N); otherwise it yields fewer and their code would run
    with fewer bins than the model's vocabulary. In that case we keep N bins by taking the
    sorted values at `linspace(0, n-1, N+1)` (the authors' earlier rule: minimum first,
    maximum last, evenly spaced ranks in between).
    """
    n = len(data)
    sorted_data = np.sort(data, axis=0)
    step = math.ceil(n / n_bins)
    picked = sorted_data[::step]
    if len(picked) == n_bins:
        return np.concatenate([picked, data.max(axis=0, keepdims=True)], axis=0)
    ranks = np.linspace(0, n - 1, n_bins + 1).astype(np.int64)
    return sorted_data[ranks]
