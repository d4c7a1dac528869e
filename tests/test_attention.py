"""The Triton attention kernels against the reference (TRITON_INTERPRET=1 on CPU, set in conftest)."""

import math

import numpy as np
import pytest
import torch

from tt import ops, reference
from tt.cache import SharedPrefix

kernels = pytest.importorskip("tt.kernels.attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernels run interpreted

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}  # max abs error, unit-scale inputs


def qkv(R, H, L, D, dtype=torch.float32, seed=0, Lk=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(R, H, L, D, generator=g).to(DEVICE, dtype)
    k, v = (torch.randn(R, H, Lk or L, D, generator=g).to(DEVICE, dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("R, H, L, D, T", [(1, 1, 1, 16, 3), (2, 2, 37, 16, 5), (1, 3, 64, 32, 16),
                                           (3, 1, 100, 24, 40), (1, 2, 33, 128, 7), (2, 1, 70, 64, 14)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_the_reference(R, H, L, D, T, dtype):
    q, k, v = qkv(R, H, L, D, dtype, seed=L)
    out = kernels.attention(q, k, v, transition_dim=T)
    want = reference.attention(q.float(), k.float(), v.float(), transition_dim=T)
    assert out.dtype == dtype
    assert (out.float() - want).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("R, H, L, D, T", [(1, 1, 5, 16, 3), (2, 2, 37, 16, 5), (1, 2, 70, 32, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_the_reference(R, H, L, D, T, dtype):
    q, k, v = qkv(R, H, L, D, dtype, seed=D + L)
    grad = torch.randn(R, H, L, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    (kernels.attention(*ours, transition_dim=T).float() * grad).sum().backward()
    theirs = [t.float().clone().requires_grad_() for t in (q, k, v)]
    (reference.attention(*theirs, transition_dim=T) * grad).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-1
    for a, b in zip(ours, theirs):
        assert (a.grad.float() - b.grad).abs().max() <= tol * max(1.0, b.grad.abs().max().item())


@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("n_new, padded", [(1, False), (1, True), (3, True), (5, False)])
def test_decode_against_the_cache_matches_the_full_window(n_new, padded, splits):
    R, H, D, T, max_len, filled = 3, 2, 16, 6, 128, 90
    g = torch.Generator().manual_seed(n_new)
    cache_k, cache_v = (torch.randn(R, H, max_len, D, generator=g).to(DEVICE) for _ in range(2))
    q = torch.randn(R, H, n_new, D, generator=g).to(DEVICE)
    key_start = torch.tensor([2 * T, 0, 5 * T], device=DEVICE) if padded else None
    k, v = cache_k[:, :, : filled + n_new], cache_v[:, :, : filled + n_new]  # strided views of the cache
    out, _ = kernels.attention_forward(q, k, v, T, q_offset=filled, key_start=key_start, splits=splits)
    want = reference.attention(q, k, v, transition_dim=T, q_offset=filled, key_start=key_start)
    assert (out - want).abs().max() <= 2e-5


def test_dropout_drops_at_its_rate_and_its_backward_is_consistent():
    R, H, L, D, T, p = 1, 1, 32, 32, 5, 0.3
    q, k, _ = qkv(R, H, L, D, seed=3)
    v = torch.eye(L, D, device=DEVICE)[None, None]  # the output rows are then the (dropped) attention weights
    weights = kernels.attention(q, k, v, transition_dim=T, dropout_p=p, seed=11)
    allowed = reference.attention_mask(L, L, T, device=DEVICE)[0, 0]
    dropped = ((weights[0, 0] == 0) & allowed).sum().item() / allowed.sum().item()
    assert abs(dropped - p) < 0.08
    undropped = reference.attention(q, k, v, transition_dim=T)[0, 0]
    kept = weights[0, 0] != 0
    torch.testing.assert_close(weights[0, 0][kept], undropped[kept] / (1 - p), rtol=1e-4, atol=1e-6)
    # same seed, same mask: the analytic gradient matches a central difference
    q, k, v = qkv(R, H, L, D, seed=4)
    direction = torch.randn_like(q)
    f = lambda x: (kernels.attention(x, k, v, transition_dim=T, dropout_p=p, seed=5) ** 2).sum()
    x = q.clone().requires_grad_()
    f(x).backward()
    eps = 1e-2
    numeric = (f(q + eps * direction) - f(q - eps * direction)) / (2 * eps)
    assert numeric.item() == pytest.approx((x.grad * direction).sum().item(), rel=2e-2)


def test_ops_dispatch_to_triton_when_asked(monkeypatch):
    q, k, v = qkv(1, 1, 9, 16)
    ops.use(attention="triton")
    assert ops.backends()["attention"][DEVICE] == "Triton"
    out = ops.attention(q, k, v, transition_dim=3)
    torch.testing.assert_close(out, reference.attention(q, k, v, transition_dim=3), rtol=0, atol=2e-5)
    ops.use(attention="reference")
    assert ops.backends()["attention"][DEVICE] == "reference"


def test_model_training_step_with_triton_matches_the_reference(monkeypatch):
    from tt.model import GPTConfig, TrajectoryTransformer

    config = GPTConfig(3, 1, n_bins=20, n_transitions=4, n_layer=2, n_head=2, n_embd=32,
                       embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    tokens = torch.randint(0, 21, (3, config.block_size + 1), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    results = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        torch.manual_seed(0)
        model = TrajectoryTransformer(config).to(DEVICE)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["triton"][1].items():
        torch.testing.assert_close(grad, results["reference"][1][name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_greedy_plan_with_triton_equals_the_reference_path(monkeypatch, window):
    from tt.config import PlanConfig
    from tt.discretize import Discretizer
    from tt.model import GPTConfig, TrajectoryTransformer
    from tt.rng import Philox
    from tt.search import beam_plan as plan
    from tt.search import pad_prefixes

    torch.manual_seed(0)
    model = TrajectoryTransformer(GPTConfig(3, 1, n_bins=15, n_transitions=5, n_layer=2, n_head=2, n_embd=32))
    model = model.eval().to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    disc = Discretizer(np.sort(np.random.default_rng(0).normal(size=(16, 6)), axis=0))
    g = torch.Generator().manual_seed(1)
    prefix = pad_prefixes([torch.randint(0, 15, (c * 6 + 3,), generator=g) for c in (3, 1)], 6)
    cfg = PlanConfig(horizon=3, beam_width=3, n_expand=2, max_context_transitions=3, k_act=1, cdf_act=None,
                     window=window)
    tokens = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        tokens[backend] = plan(model, prefix.to(DEVICE), disc, cfg, Philox(0, DEVICE)).tokens
    assert torch.equal(tokens["triton"], tokens["reference"])


def test_backward_refuses_partial_windows():
    q, k, v = qkv(1, 1, 4, 16, Lk=8)
    with pytest.raises(ValueError, match="whole windows"):
        kernels.attention(q.requires_grad_(), k, v, transition_dim=3, q_offset=4)
    assert math.isfinite(kernels.attention(q.detach(), k, v, transition_dim=3, q_offset=4).sum().item())


def test_long_windows_forward_and_backward():
    q, k, v = qkv(1, 1, 1030, 16, seed=9)
    torch.testing.assert_close(kernels.attention(q, k, v, transition_dim=17),
                               reference.attention(q, k, v, transition_dim=17), rtol=0, atol=2e-5)
    grad = torch.randn_like(q)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    (kernels.attention(*ours, transition_dim=17) * grad).sum().backward()
    theirs = [t.clone().requires_grad_() for t in (q, k, v)]
    (reference.attention(*theirs, transition_dim=17) * grad).sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("G, n, blocks, S, own, Lq", [(1, 4, 2, 16, 3, 1), (2, 3, 1, 8, 9, 1), (3, 1, 2, 24, 1, 1),
                                                    (2, 3, 2, 8, 5, 3)])
def test_cascade_attention_after_a_shared_prefix_on_triton(monkeypatch, G, n, blocks, S, own, Lq):
    """Attention after a shared prefix on Triton: one query per row in one fused kernel, several by
    the cascade (prefix per group, own keys per row, merged by log-sum-exp)."""
    ops.use(attention="triton")
    g = torch.Generator().manual_seed(S + own)
    R, H, D, T = blocks * G * n, 2, 16, 4
    q, k, v = (torch.randn(R, H, L, D, generator=g).to(DEVICE) for L in (Lq, own, own))
    pk, pv = (torch.randn(G, H, S, D, generator=g).to(DEVICE) for _ in range(2))
    start = (torch.arange(G, device=DEVICE) % (S // T + 1)) * T
    start[-1] = S  # a group whose prefix is all padding
    key_start = start.repeat_interleave(n).repeat(blocks)
    prefix = SharedPrefix(pk, pv, n)
    out = ops.cascade.attention_after_prefix(q, k, v, prefix, T, S + own - Lq, key_start)
    want = reference.attention(q, k, v, transition_dim=T, q_offset=S + own - Lq, key_start=key_start, prefix=prefix)
    assert (out - want).abs().max() <= 2e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G, n, blocks, S, own, D, T, padded", [
    (1, 1, 1, 16, 1, 16, 4, False),    # batch 1, one own key
    (1, 40, 2, 80, 12, 32, 16, False),  # a planner's shapes: more rows per group than one tile
    (3, 5, 2, 21, 9, 24, 7, True),     # odd sizes, padding (one group all padding)
    (2, 17, 1, 10, 30, 128, 5, True),  # wide heads, own keys past the query (causal)
])
def test_decode_after_prefix_kernel_matches_the_reference(G, n, blocks, S, own, D, T, padded, dtype):
    """The fused one-query decode after a shared prefix: cache-shaped strided inputs, a poisoned
    output, extreme and tied scores."""
    g = torch.Generator().manual_seed(G * 100 + own)
    R, H = blocks * G * n, 3
    cache = torch.randn(2, 2 * R, H, S + own + 3, D, generator=g).to(DEVICE, dtype)  # read in place, strided
    k, v = cache[0, :R, :, S : S + own], cache[1, :R, :, S : S + own]
    pk, pv = cache[0, R : R + G, :, :S], cache[1, R : R + G, :, :S]
    q = torch.randn(R, H, 1, D, generator=g).to(DEVICE, dtype)
    q[0] *= 30.0  # extreme scores
    if own > 1:
        cache[0, 1, :, S + 1] = cache[0, 1, :, S]  # tied keys
    q_offset = S + min(own, 20) - 1
    key_start = None
    if padded:
        start = (torch.arange(G) % (S // T + 1)) * T
        start[-1] = S + 1  # all of the group's prefix is padding
        key_start = start.repeat_interleave(n).repeat(blocks).to(DEVICE, torch.int32 if G == 3 else torch.int64)
    out = torch.full((R, H, 1, D), float("nan"), device=DEVICE, dtype=dtype)
    kernels.decode_after_prefix(q, k, v, pk, pv, n, T, q_offset, key_start, out=out)
    want = reference.attention(q, k, v, transition_dim=T, q_offset=q_offset, key_start=key_start,
                               prefix=SharedPrefix(pk, pv, n))
    assert not out.isnan().any()
    assert (out.float() - want.float()).abs().max() <= TOL[dtype]
