"""The blocks' weights in the form each decode step reads: MKL-packed GEMM operands for the C++ step,
stacked per kind for the Triton kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tt.ops import dispatch


@dataclass(frozen=True)
class PackedWeights:
    """The blocks' parameters for the C++ `decode_layers`, with their GEMM weights packed for steps
    of a given number of rows (`tt::decode_pack`: MKL's packed GEMM operands, faster at planner
    sizes). The packed copies are a snapshot: `decode_layers` refuses them once a weight has
    changed in place (an optimizer step, `load_state_dict`); fetch them again then."""

    weights: list[torch.Tensor]
    packed: list[torch.Tensor]


# What decode_layers takes as the blocks' parameters (see decode_weights).
DecodeWeights = list[torch.Tensor] | tuple[torch.Tensor, ...] | PackedWeights


def decode_weights(weights: list[torch.Tensor], rows: int | None = None) -> DecodeWeights:
    """The blocks' parameters (`tt.block_weights.BlockWeights` of each, flat) in the form `decode_layers` reads on
    their device: stacked per kind `[n_layer, ...]` for Triton; for the C++ op the list itself, or
    given the `rows` of the steps to come, `PackedWeights` (where packing is available and pays)."""
    if not weights:
        return weights
    backend = dispatch.resolved(weights[0].device).decode
    if backend == "Triton":
        return dispatch.triton_decode().stack_weights(weights)
    if backend == "C++" and rows and weights[0].dtype == torch.float32:
        with torch.no_grad():
            packed = torch.ops.tt.decode_pack(weights, rows)
        if packed:
            return PackedWeights(weights, packed)
    return weights
