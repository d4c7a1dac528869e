"""The authors' GPT and training step (jannerm/trajectory-transformer, `trajectory/models/transformers.py`
and `trajectory/utils/training.py`), written out from their module structure for the training
benchmark: minGPT blocks with separate key, query and value projections and an explicit masked
attention matrix, the per-dimension `EinLinear` head, the weighted cross-entropy, AdamW with their
decay groups and gradient clipping. Its weights come from a tt model (`from_tt`), so both train the
same network from the same point."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, transition_dim: int, pdrop: float):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(n_embd, n_embd) for _ in range(3))
        self.proj = nn.Linear(n_embd, n_embd)
        self.attn_drop, self.resid_drop = nn.Dropout(pdrop), nn.Dropout(pdrop)
        mask = torch.tril(torch.ones(block_size, block_size))
        mask[:, transition_dim - 1 :: transition_dim] = 0  # value tokens are never attended
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size))
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k, q, v = (f(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for f in (self.key, self.query, self.value))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, transition_dim: int, pdrop: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, transition_dim, pdrop)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(pdrop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class EinLinear(nn.Module):
    """One linear map per dimension of a transition (their head)."""

    def __init__(self, n_models: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_models, out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("eoi,bei->beo", self.weight, x)


class AuthorsGPT(nn.Module):
    def __init__(self, observation_dim: int, action_dim: int, n_bins: int, n_transitions: int, n_layer: int,
                 n_head: int, n_embd: int, pdrop: float = 0.1, action_weight: float = 5.0):
        super().__init__()
        self.observation_dim, self.action_dim, self.vocab_size = observation_dim, action_dim, n_bins
        self.transition_dim = observation_dim + action_dim + 2
        self.block_size = n_transitions * self.transition_dim - 1
        self.stop_token = n_bins * self.transition_dim
        self.n_embd, self.action_weight = n_embd, action_weight
        self.tok_emb = nn.Embedding(n_bins * self.transition_dim + 1, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.block_size, n_embd))
        self.drop = nn.Dropout(pdrop)
        self.blocks = nn.Sequential(*(Block(n_embd, n_head, self.block_size, self.transition_dim, pdrop)
                                      for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = EinLinear(self.transition_dim, n_embd, n_bins + 1)

    def offset_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        offsets = (torch.arange(self.transition_dim) * self.vocab_size).repeat(math.ceil(t / self.transition_dim))
        offset_idx = idx + offsets[:t].to(idx.device)
        offset_idx[idx == self.vocab_size] = self.stop_token
        return offset_idx

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.drop(self.tok_emb(self.offset_tokens(idx)) + self.pos_emb[:, :t, :])
        x = self.ln_f(self.blocks(x))
        n_pad = (self.transition_dim - t % self.transition_dim) % self.transition_dim
        x = torch.cat([x, torch.zeros(b, n_pad, self.n_embd, device=x.device)], dim=1)
        logits = self.head(x.view(-1, self.transition_dim, self.n_embd))
        logits = logits.reshape(b, t + n_pad, self.vocab_size + 1)[:, :t]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        weights = torch.cat([torch.ones(self.observation_dim), torch.full((self.action_dim,), self.action_weight),
                             torch.ones(2)]).to(idx.device)
        weights = weights.repeat(math.ceil(t / self.transition_dim))[1 : t + 1].repeat(b, 1)
        return (loss * weights.view(-1) * mask.reshape(-1)).mean()

    @classmethod
    def from_tt(cls, model) -> AuthorsGPT:
        """Their GPT with a tt model's weights (the inverse of `TrajectoryTransformer.from_reference`)."""
        c = model.config
        gpt = cls(c.observation_dim, c.action_dim, c.n_bins, c.n_transitions, c.n_layer, c.n_head, c.n_embd,
                  c.resid_pdrop, c.action_weight)
        with torch.no_grad():
            gpt.tok_emb.weight.copy_(model.tok_emb.weight)
            gpt.pos_emb.copy_(model.pos_emb)
            gpt.head.weight.copy_(model.head)
            gpt.ln_f.load_state_dict(model.ln_f.state_dict())
            for theirs, ours in zip(gpt.blocks, model.blocks):
                theirs.ln1.load_state_dict(ours.ln1.state_dict())
                theirs.ln2.load_state_dict(ours.ln2.state_dict())
                weights, biases = ours.attn.qkv.weight.split(c.n_embd), ours.attn.qkv.bias.split(c.n_embd)
                for linear, w, bias in zip((theirs.attn.query, theirs.attn.key, theirs.attn.value), weights, biases):
                    linear.weight.copy_(w)
                    linear.bias.copy_(bias)
                theirs.attn.proj.load_state_dict(ours.attn.proj.state_dict())
                theirs.mlp[0].load_state_dict(ours.mlp.fc.state_dict())
                theirs.mlp[2].load_state_dict(ours.mlp.proj.state_dict())
        return gpt


def configure_optimizer(gpt: AuthorsGPT, learning_rate: float = 6e-4, betas=(0.9, 0.95),
                        weight_decay: float = 0.1) -> torch.optim.AdamW:
    """Their AdamW: weight decay on the Linear and EinLinear weights, none on biases, norms, embeddings."""
    decay, no_decay = set(), set()
    for module_name, module in gpt.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            (decay if name == "weight" and isinstance(module, (nn.Linear, EinLinear)) else no_decay).add(full)
    params = dict(gpt.named_parameters())
    groups = [{"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
              {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def training_step(gpt: AuthorsGPT, optimizer: torch.optim.Optimizer, x, y, mask, grad_clip: float = 1.0) -> float:
    """One step of their trainer: forward, backward, clip, AdamW; the loss read back, as they log it."""
    loss = gpt(x, y, mask)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(gpt.parameters(), grad_clip)
    optimizer.step()
    return loss.item()
