"""The counter-based generator of tt's sampling ops: Philox4x32-10 at (seed, offset).

The state lives in an int64 `[2]` tensor on the device, so draws need no host round trip and a
captured CUDA graph advances it on replay; the same seed gives the same draws on CPU and CUDA
(`csrc/philox.h`, mirrored in `tt.reference.philox_uniform`).
"""

from __future__ import annotations

import torch


class Philox:
    """Seed and running offset; every sampling call draws one uniform per row at the current
    offset, then advances it by one."""

    def __init__(self, seed: int | torch.Tensor, device: torch.device | str = "cpu"):
        seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(1)
        self.state = torch.cat([seed, torch.zeros(1, dtype=torch.int64, device=device)])

    @classmethod
    def from_generator(cls, generator: torch.Generator | None, device: torch.device | str = "cpu") -> Philox:
        """A fresh seed drawn from a torch generator (on its device: no host synchronization)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)
        return cls(seed.to(device), device)

    @property
    def device(self) -> torch.device:
        return self.state.device

    def advance(self) -> None:
        self.state[1] += 1

    def current(self) -> tuple[int, int]:
        """(seed, offset) on the host, for the Python reference."""
        seed, offset = self.state.tolist()
        return seed, offset
