"""Attention with the TT mask on CUDA: the Triton kernels against scaled_dot_product_attention
with the same (materialized) mask and against FlexAttention; training forward+backward at the
published training shapes (batch 256 windows of K=10 Hopper transitions, 4 heads of 32) and
planner decode (256 rows, one new token against a cache of 79 slots). CUDA only."""

import pytest
import torch
from common import DEVICES, SMALL, record

from tt import ops, reference

pytestmark = pytest.mark.skipif("cuda" not in DEVICES, reason="CUDA benchmarks")

T = 16
TRAIN = (32, 4, 159, 32) if SMALL else (256, 4, 159, 32)  # windows, heads, block size, head dim


def cuda_timed(fn):
    return lambda: (fn(), torch.cuda.synchronize())


def flex_attention_fn(L: int, q_offset: int = 0):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + q_offset) & (kv_idx % T != T - 1)

    block_mask = create_block_mask(mask_mod, None, None, L, L, device="cuda")
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("impl", ["reference", "triton", "flex"])
def test_training_attention(benchmark, timings, impl, dtype):
    from tt.kernels.attention import attention

    B, H, L, D = TRAIN
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, L, D, device="cuda", dtype=dtype)
    if impl == "reference":
        fn = lambda: reference.attention(q, k, v, transition_dim=T)
    elif impl == "triton":
        fn = lambda: attention(q, k, v, transition_dim=T)
    else:
        try:
            flex = flex_attention_fn(L)
            flex(q, k, v)
        except Exception as e:  # FlexAttention missing or unable to compile here
            pytest.skip(f"FlexAttention unavailable: {e}")
        fn = lambda: flex(q, k, v)

    def step():
        fn().backward(grad)

    benchmark.group = f"attention cuda train fwd+bwd {dtype} {B}x{H}x{L}x{D}"
    benchmark(cuda_timed(step))
    # causal: half of the forward's two and the backward's five L x L x D products (FlashAttention's count)
    size = torch.finfo(dtype).bits // 8
    record(benchmark, timings, benchmark.group, impl, bytes_moved=8 * B * H * L * D * size,
           flops=7 * B * H * L * L * D)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_decode_attention(benchmark, timings, impl):
    from tt.kernels.attention import attention

    R, H, S, D = 256, 4, 79, 32
    cache = torch.randn(2, R, H, 128, D, device="cuda")
    q = torch.randn(R, H, 1, D, device="cuda")
    k, v = cache[0, :, :, :S], cache[1, :, :, :S]
    kernel = attention if impl == "triton" else reference.attention
    benchmark.group = f"attention cuda decode {R}x{H} cache {S}"
    benchmark(cuda_timed(lambda: kernel(q, k, v, transition_dim=T, q_offset=S - 1)))
    record(benchmark, timings, benchmark.group, impl, bytes_moved=4 * R * H * D * (2 * S + 2))


@pytest.mark.parametrize("own", [12, 76])
@pytest.mark.parametrize("impl", ["reference", "triton whole", "triton prefix"])
def test_decode_after_prefix(benchmark, timings, own, impl):
    """A cached plan's decode at beam 128 x 2 copies: every row's query against an 80-slot context
    all rows share and `own` slots of its own. The reference and `triton whole` read whole
    windows (the context copied into every row); `triton prefix` reads the context once."""
    from tt.kernels.attention import attention, decode_after_prefix

    R, H, S, D = 256, 4, 80, 32
    cache = torch.randn(2, R, H, S + own, D, device="cuda")
    cache[:, :, :, :S] = cache[:, :1, :, :S].clone()
    q = torch.randn(R, H, 1, D, device="cuda")
    k, v, slot = cache[0], cache[1], S + own - 1
    if impl == "triton prefix":
        fn = lambda: decode_after_prefix(q, k[:, :, S:], v[:, :, S:], k[:1, :, :S], v[:1, :, :S], R, T, slot)
        moved = 4 * H * D * (2 * S + R * (2 * own + 2))
    else:
        kernel = attention if impl == "triton whole" else reference.attention
        fn = lambda: kernel(q, k, v, transition_dim=T, q_offset=slot)
        moved = 4 * R * H * D * (2 * (S + own) + 2)
        if impl == "reference":  # the same answer as reading the context once
            want = decode_after_prefix(q, k[:, :, S:], v[:, :, S:], k[:1, :, :S], v[:1, :, :S], R, T, slot)
            torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4)
    benchmark.group = f"attention cuda decode {R}x{H} after prefix {S}+{own}"
    benchmark(cuda_timed(fn))
    record(benchmark, timings, benchmark.group, impl, bytes_moved=moved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["python blocks", "triton fused"])
def test_decode_step(benchmark, timings, monkeypatch, impl, dtype):
    """One decode step (`model.decode`: embedding, blocks, logits) at an exact plan's shapes, beam
    128 x 2 copies: 256 rows sharing a 4-transition context (64 slots), 12 slots of their own.
    The blocks run as PyTorch ops (`python blocks`, ~50 kernels) or as one kernel (`triton fused`)."""
    from common import hopper

    model, _, _ = hopper("cuda")
    model = model.to(dtype)
    R, S, own = 256, 4 * T, 12
    cache = model.setup_cache(R, model.config.block_size)
    cache.kv.normal_()
    cache.share(S, groups=1, group_rows=R)
    token = torch.randint(0, model.config.n_bins, (R,), device="cuda")
    ops.use(decode="blocks" if impl == "python blocks" else "fused")
    weights = model.block_weights()
    fn = lambda: model.decode(token, cache, S + own, None, weights)
    with torch.no_grad():
        if impl == "triton fused":  # the same step as the blocks'
            ops.use(decode="blocks")
            want = model.decode(token, cache, S + own, None, model.block_weights()).float()
            ops.use(decode="fused")
            tol = 1e-3 if dtype == torch.float32 else 0.1 * want.abs().max().item()
            torch.testing.assert_close(fn().float(), want, rtol=0, atol=tol)
        benchmark.group = f"decode step cuda {dtype} {R} rows after prefix {S}+{own}"
        benchmark(cuda_timed(fn))
    c, layers = model.config.n_embd, model.config.n_layer
    params = sum(w.numel() for w in model.blocks.parameters())
    size = torch.finfo(dtype).bits // 8
    kv_read = layers * 2 * c * (S + R * (own + 1))  # the prefix once, each row's own slots and the new one
    record(benchmark, timings, benchmark.group, impl, bytes_moved=size * (params + kv_read + 2 * R * c),
           flops=2 * R * params + 4 * R * layers * c * (S + own + 1))
