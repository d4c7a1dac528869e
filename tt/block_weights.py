"""One transformer block's parameters, named, in the order every decode step reads them: the Python
blocks (`tt.model`), the C++ `tt::decode_layers` (csrc/ops.h's `BlockWeight`, the same names in
CamelCase) and the Triton decode kernel (`tt.kernels.decode`)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class BlockWeights(NamedTuple):
    ln1_weight: torch.Tensor
    ln1_bias: torch.Tensor
    qkv_weight: torch.Tensor  # [3C, C]
    qkv_bias: torch.Tensor
    attn_proj_weight: torch.Tensor  # [C, C]
    attn_proj_bias: torch.Tensor
    ln2_weight: torch.Tensor
    ln2_bias: torch.Tensor
    fc_weight: torch.Tensor  # [hidden, C]
    fc_bias: torch.Tensor
    mlp_proj_weight: torch.Tensor  # [C, hidden]
    mlp_proj_bias: torch.Tensor

    @classmethod
    def of(cls, block) -> BlockWeights:
        """The parameters of a `tt.model.Block`."""
        return cls(block.ln1.weight, block.ln1.bias, block.attn.qkv.weight, block.attn.qkv.bias,
                   block.attn.proj.weight, block.attn.proj.bias, block.ln2.weight, block.ln2.bias,
                   block.mlp.fc.weight, block.mlp.fc.bias, block.mlp.proj.weight, block.mlp.proj.bias)


FIELDS = BlockWeights._fields
PER_BLOCK = len(FIELDS)  # the weights of a block in a flat list of every block's (decode_layers' argument)


def position(name: str) -> int:
    """Where a block's weight `name` sits among its PER_BLOCK."""
    return FIELDS.index(name)
