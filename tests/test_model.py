import contextlib
import math
import re

import pytest
import torch
import torch.nn.functional as F

from tt import ops
from tt.model import GPTConfig, TrajectoryTransformer

SHAPES = [  # (observation_dim, action_dim, n_bins, n_transitions, n_layer, n_head, n_embd)
    (3, 1, 20, 4, 2, 2, 32),
    (11, 3, 100, 3, 2, 4, 64),
    (1, 1, 7, 5, 1, 1, 8),
    (17, 6, 13, 2, 3, 4, 48),
]


def random_model(shape, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    O, A, N, K, L, H, d = shape
    model = TrajectoryTransformer(GPTConfig(O, A, n_bins=N, n_transitions=K, n_layer=L, n_head=H, n_embd=d))
    with torch.no_grad():  # larger than init so that attention patterns matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval().to(dtype)


def random_tokens(model, B, L, generator=None):
    return torch.randint(0, model.config.n_bins + 1, (B, L), generator=generator)


@pytest.mark.parametrize("shape", SHAPES)
def test_value_tokens_are_never_attended(shape):
    model = random_model(shape)
    T, L = model.transition_dim, model.config.block_size
    tokens = random_tokens(model, 2, L)
    base = model(tokens)
    for p in range(T - 1, L, T):
        changed = tokens.clone()
        changed[:, p] = (changed[:, p] + 1) % (model.config.n_bins + 1)
        diff = (model(changed) - base).abs().amax(dim=(0, 2))
        others = torch.ones(L, dtype=torch.bool)
        others[p] = False
        assert diff[others].max() == 0, f"value token at {p} leaked into other positions"
    # and a non-value token does influence later positions (the test can fail)
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1) % model.config.n_bins
    assert (model(changed)[:, 1:] - base[:, 1:]).abs().max() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_prefill_and_decode_equal_full_forward(shape):
    model = random_model(shape, seed=1)
    L = model.config.block_size
    tokens = random_tokens(model, 3, L)
    full = model(tokens)
    cache = model.setup_cache(max_rows=5)
    for split in sorted({1, model.transition_dim - 1, L // 2, L - 1}):
        torch.testing.assert_close(model.prefill(tokens[:, :split], cache), full[:, split - 1], rtol=0, atol=1e-10)
        for slot in range(split, L):
            torch.testing.assert_close(model.decode(tokens[:, slot], cache, slot), full[:, slot], rtol=0, atol=1e-10)
    # a chunk of several tokens at once, in the middle of the window
    torch.testing.assert_close(model.step(tokens[:, 4:9], cache, 4), full[:, 4:9], rtol=0, atol=1e-10)


def test_left_padded_rows_match_unpadded_windows():
    model = random_model(SHAPES[0], seed=2)
    T = model.transition_dim
    short = random_tokens(model, 1, 2 * T + 2)
    longer = random_tokens(model, 1, 3 * T + 2)
    padded = torch.cat([torch.full((1, T), -1), short], dim=1)
    cache = model.setup_cache(2)
    key_start = torch.tensor([T, 0])
    logits = model.step(torch.cat([padded, longer]), cache, 0, key_start)
    torch.testing.assert_close(logits[0, T:], model(short)[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[1], model(longer)[0], rtol=0, atol=1e-10)
    nxt = random_tokens(model, 2, 1)
    dec = model.decode(nxt[:, 0], cache, 3 * T + 2, key_start)
    torch.testing.assert_close(dec[0], model(torch.cat([short, nxt[:1]], 1))[0, -1], rtol=0, atol=1e-10)
    torch.testing.assert_close(dec[1], model(torch.cat([longer, nxt[1:]], 1))[0, -1], rtol=0, atol=1e-10)


def test_loss_weights_by_target_kind():
    model = random_model(SHAPES[0], seed=3)
    O, A, T = 3, 1, model.transition_dim
    tokens = random_tokens(model, 2, model.config.block_size + 1)
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = torch.ones_like(y, dtype=torch.float64)
    mask[1, 10:] = 0
    logits, loss = model(x, y, mask)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(2, -1)
    kind = (torch.arange(1, y.shape[1] + 1)) % T
    weight = torch.where((kind >= O) & (kind < O + A), 5.0, 1.0).to(ce)
    torch.testing.assert_close(loss, (ce * weight * mask).mean())


def authors_gpt_forward(sd, tokens, O, A, N, n_head):
    """The authors' GPT forward written out from their module structure (minGPT + EinLinear head)."""
    T = O + A + 2
    B, t = tokens.shape
    offsets = (torch.arange(t) % T) * N
    idx = torch.where(tokens == N, N * T, tokens + offsets)
    x = sd["tok_emb.weight"][idx] + sd["pos_emb"][:, :t]
    mask = torch.tril(torch.ones(t, t))
    mask[:, T - 1 :: T] = 0
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(n_layer):
        p = f"blocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        C = h.shape[-1]
        k, q, v = (F.linear(h, sd[p + f"attn.{n}.weight"], sd[p + f"attn.{n}.bias"])
                   .view(B, t, n_head, C // n_head).transpose(1, 2) for n in ("key", "query", "value"))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        att = att.masked_fill(mask == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, t, C)
        x = x + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                     sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
        x = x + h
    x = F.layer_norm(x, x.shape[-1:], sd["ln_f.weight"], sd["ln_f.bias"])
    n_pad = (T - t % T) % T
    x = torch.cat([x, torch.zeros(B, n_pad, C, dtype=x.dtype)], 1).view(-1, T, C)
    logits = torch.einsum("eoi,bei->beo", sd["head.weight"], x)
    return logits.reshape(B, t + n_pad, N + 1)[:, :t]


def authors_state_dict(O, A, N, K, n_layer, n_embd, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = O + A + 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.3
    sd = {"tok_emb.weight": r(N * T + 1, n_embd), "pos_emb": r(1, K * T - 1, n_embd),
          "ln_f.weight": 1 + r(n_embd), "ln_f.bias": r(n_embd), "head.weight": r(T, N + 1, n_embd)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        for n in ("key", "query", "value", "proj"):
            sd[p + f"attn.{n}.weight"], sd[p + f"attn.{n}.bias"] = r(n_embd, n_embd), r(n_embd)
        sd[p + "attn.mask"] = torch.ones(1, 1, K * T - 1, K * T - 1)
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = r(4 * n_embd, n_embd), r(4 * n_embd)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = r(n_embd, 4 * n_embd), r(n_embd)
        for ln in ("ln1", "ln2"):
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = 1 + r(n_embd), r(n_embd)
    return sd


@pytest.mark.parametrize("O, A, N, K, n_layer, n_head, n_embd", [(3, 1, 20, 4, 2, 2, 32), (11, 3, 100, 2, 4, 4, 128)])
def test_import_of_authors_state_dict_gives_identical_logits(O, A, N, K, n_layer, n_head, n_embd):
    sd = authors_state_dict(O, A, N, K, n_layer, n_embd)
    model = TrajectoryTransformer.from_reference(sd, O, A, n_head=n_head).double().eval()
    assert model.config.n_bins == N and model.config.n_transitions == K and model.config.n_layer == n_layer
    tokens = torch.randint(0, N + 1, (3, K * (O + A + 2) - 1))
    torch.testing.assert_close(model(tokens), authors_gpt_forward(sd, tokens, O, A, N, n_head), rtol=0, atol=1e-10)
    torch.testing.assert_close(model(tokens[:, :7]), authors_gpt_forward(sd, tokens[:, :7], O, A, N, n_head),
                               rtol=0, atol=1e-10)


def test_import_rejects_mismatched_dimensions():
    sd = authors_state_dict(3, 1, 20, 4, 1, 16)
    with pytest.raises(ValueError, match="head has 6 outputs per transition"):
        TrajectoryTransformer.from_reference(sd, 4, 1)
    del sd["pos_emb"]
    with pytest.raises(ValueError, match="missing 'pos_emb'"):
        TrajectoryTransformer.from_reference(sd, 3, 1)


def test_bad_tokens_and_lengths_raise():
    model = random_model(SHAPES[0])
    with pytest.raises(ValueError, match="exceeds the block size"):
        model(torch.zeros(1, model.config.block_size + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 20\]"):
        model(torch.full((1, 4), 21))
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.zeros(4, dtype=torch.long))


needs_c = pytest.mark.skipif(not ops.compiled_library(), reason="tt._C is not built")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's CPU threads set to n inside, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_steps_match(step, want, shared: int, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Two steps' (logits, K/V of the rows' slots) agree (rows past the groups keep their poison in
    the shared slots), and the step wrote every own slot."""
    for a, b in zip(step, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
    assert step[0].isfinite().all() and step[1][..., shared:, :].isfinite().all()


def fused_decode_step(model, rows: int, shared: int, padded: bool, own: int = 3, goals: int = 0,
                      goal_table: bool = False, packed: bool = False):
    """One decode step of `model` after a prefill, as the planner does it: `rows` rows (two groups
    when even) share `shared` prefix slots, then hold `own` slots each; the step writes slot
    shared + own. Returns the logits and the cache's K/V of the rows' slots. The cache is
    poisoned with NaN first: whatever is read must have been written. A goal-conditioned model
    reads `goals` random goals: the prefill's rows goal 0, 1, ..., the step's rows theirs by
    groups of rows // goals, or by a random row table (`goal_table`). `packed`: the block weights
    as a search fetches them for its rows (packed GEMM weights where that pays)."""
    torch.manual_seed(rows + shared + own)
    T, N, dtype = model.transition_dim, model.config.n_bins, model.tok_emb.weight.dtype
    device = model.tok_emb.weight.device
    groups = 2 if rows % 2 == 0 and shared else 1
    group_start = torch.tensor([T, 0][:groups], device=device)  # the first group's window: left-padded
    key_start = group_start.repeat_interleave(rows // groups) if padded else None
    prefix = torch.randint(0, N, (groups, shared + own)).to(device)
    token = torch.randint(0, N, (rows,)).to(device)
    cache = model.setup_cache(rows + 2, shared + own + 1)
    cache.kv.fill_(float("nan"))
    with torch.no_grad():
        if goals:
            model.encode_goal(torch.randint(0, N, (goals, model.config.observation_dim)).to(device), cache)
        with ops.using(decode="blocks"):  # the same cache for both paths of the step
            model.prefill(prefix, cache, group_start if padded else None)
        cache.share(shared, groups=groups, group_rows=max(rows // groups, 1))
        # the rows' own slots after the prefix: the prefix rows' last `own` tokens, per group
        group = torch.arange(rows, device=device) // max(rows // groups, 1) % groups
        cache.kv[:, :, :rows, :, shared : shared + own] = cache.kv[:, :, group, :, shared : shared + own]
        if goals:
            cache.read_goals(max(rows // goals, 1), torch.randint(0, goals, (rows,)).to(device) if goal_table else None)
        logits = model.decode(token, cache, shared + own, key_start, model.block_weights(rows) if packed else None)
    assert logits.dtype == dtype
    return logits, cache.kv[:, :, :rows, :, : shared + own + 1].clone()


@needs_c
@pytest.mark.parametrize("rows, shared, padded, goals, goal_table", [
    (1, 0, False, 0, False), (6, 5, False, 0, False), (6, 5, True, 0, False), (12, 10, True, 0, False),
    # 16 rows and more run in chunks of rows, one per thread (prefix and goal mappings as tables)
    (16, 5, True, 0, False), (37, 0, False, 0, False), (64, 10, True, 0, False),
    (24, 5, False, 3, False), (33, 10, True, 2, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_decode_step_matches_the_python_blocks(monkeypatch, rows, shared, padded, goals, goal_table,
                                                     threads):
    """tt::decode_layers runs Block.forward's arithmetic (the BLAS GEMM that addmm calls, the same
    adds; its own layer norm and GELU, which round otherwise than ATen's): the logits and
    everything it writes to the cache are the Python path's to float rounding, also when its
    threads each run a chunk of the rows."""
    torch.manual_seed(rows + shared)
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=3, n_head=2, n_embd=16,
                                            goal_conditioned=bool(goals))).eval()
    out = {}
    with torch_threads(threads):
        for fused in (True, False):
            ops.use(decode="fused" if fused else "blocks")
            assert ops.backends()["decode_layers"]["cpu"] == ("C++" if fused else "Python blocks")
            out[fused] = fused_decode_step(model, rows, shared, padded, goals=goals, goal_table=goal_table)
    assert_steps_match(out[True], out[False], shared)


needs_triton = pytest.mark.skipif(ops.dispatch.triton_attention() is None, reason="Triton is not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the Triton kernels run interpreted


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, shared, own, padded, n_head, n_embd", [
    (1, 0, 3, False, 2, 16),    # batch 1, no shared prefix, head dim 8 (padded to 16 inside)
    (6, 5, 4, True, 2, 16),     # two padded groups; the new token is a value token (slot 9, T=5)
    (34, 10, 3, True, 3, 48),   # two groups of 17 rows: tiles of 16 rows straddle them
    (37, 5, 6, False, 4, 128),  # the published width, odd rows, one group
])
def test_triton_decode_step_matches_the_python_blocks(monkeypatch, rows, shared, own, padded, n_head, n_embd, dtype):
    """The one-kernel decode step (Triton, interpreted on CPU) against the Python blocks on the
    reference attention: logits and every K/V it writes, from a NaN-poisoned cache."""
    torch.manual_seed(n_embd)
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=3, n_head=n_head,
                                            n_embd=n_embd)).eval().to(DEVICE)
    with torch.no_grad():  # larger than init so that attention patterns and LayerNorms matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        out[backend] = fused_decode_step(model.to(dtype if backend == "triton" else torch.float32), rows, shared,
                                         padded, own)
    assert ops.backends()["decode_layers"][DEVICE] == "Python blocks"
    ops.use(attention="triton")
    assert ops.backends()["decode_layers"][DEVICE] == "Triton"
    assert_step_matches(out["triton"], out["reference"], shared, dtype)


def assert_step_matches(step, want, shared: int, dtype: torch.dtype) -> None:
    """A decode step's (logits, K/V of the rows' slots) against the reference's: every own slot
    written and finite, the logits and the new token's K/V within dtype's tolerance."""
    (logits, kv), (want_logits, want_kv) = step, want
    assert logits.isfinite().all() and kv[..., shared:, :].isfinite().all()
    tol = 2e-4 if dtype == torch.float32 else 3e-2 * want_logits.abs().max().item()
    torch.testing.assert_close(logits.float(), want_logits, rtol=0, atol=tol)
    new, want_new = kv[..., -1, :].float(), want_kv[..., -1, :]
    torch.testing.assert_close(new, want_new, rtol=0,
                               atol=2e-5 if dtype == torch.float32 else 3e-2 * want_new.abs().max().item())


@needs_triton
def test_triton_decode_step_checks_its_arguments():
    from tt.kernels import decode

    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=16)).eval()
    weights = decode.stack_weights(model.block_weights())  # on CPU (not Triton) the list itself
    cache = model.setup_cache(4, 20)
    x = torch.zeros(4, 16)
    with pytest.raises(ValueError, match="the cache must be"):
        decode.decode_layers(x, weights, 2, cache.kv[0], 3, 0, 1, 1, 5)
    with pytest.raises(ValueError, match="do not fit"):
        decode.decode_layers(torch.zeros(5, 16), weights, 2, cache.kv, 3, 0, 1, 1, 5)
    with pytest.raises(ValueError, match="do not fit"):
        decode.decode_layers(x, weights, 2, cache.kv, 20, 0, 1, 1, 5)
    with pytest.raises(ValueError, match="12 weights per block"):
        decode.stack_weights(list(weights)[:5])
    assert not decode.supports(512, 2048)


def multi_token_step(model, rows: int, tokens: int, shared: int, mode: str, padded: bool):
    """`tokens` tokens per row at once after `shared` prefix slots, as a re-encoding runs them
    (`last_only`): the prefix read by a random row `table`, by `groups` of rows, or `none`.
    Returns the last token's logits and the cache's K/V of the rows' slots (poisoned first)."""
    torch.manual_seed(rows * tokens + shared)
    T, N = model.transition_dim, model.config.n_bins
    groups = {"table": 3, "groups": 2, "none": 1}[mode]
    group_start = torch.tensor([T, 0, 0][:groups])  # the first prefix is left-padded
    cache = model.setup_cache(max(rows, groups) + 1, shared + tokens + 1)
    cache.kv.fill_(float("nan"))
    table = torch.randint(0, groups, (rows,)) if mode == "table" else torch.arange(rows) // (rows // groups) % groups
    with torch.no_grad():
        if shared:
            with ops.using(decode="blocks"):  # the same prefix for both paths of the step
                model.prefill(torch.randint(0, N, (groups, shared)), cache, group_start if padded else None)
            by = {"rows": table} if mode == "table" else {"group_rows": rows // groups}
            cache.share(shared, groups=groups, **by)
        logits = model.step(torch.randint(0, N, (rows, tokens)), cache, shared, group_start[table] if padded else None,
                            last_only=True)
    return logits, cache.kv[:, :, :rows, :, : shared + tokens].clone()


@needs_c
@pytest.mark.parametrize("rows, tokens, shared, mode, padded", [
    (1, 1, 0, "none", False), (1, 23, 0, "none", False), (6, 5, 10, "groups", True), (26, 7, 12, "table", True),
    (64, 5, 11, "table", False), (13, 16, 15, "table", True), (3, 31, 13, "table", False),
    (40, 3, 10, "groups", False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_of_several_tokens(monkeypatch, rows, tokens, shared, mode, padded, threads):
    """Several tokens per row in one tt::decode_layers call (a prefill, a re-encoding's steps):
    the last token's logits and every K/V written are the Python blocks', to float rounding
    (where the blocks attend a query at a time, after a table of prefixes, or run SDPA)."""
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=10, n_layer=3, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # larger than init so that attention patterns and LayerNorms matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = {}
    with torch_threads(threads):
        for fused in (True, False):
            ops.use(decode="fused" if fused else "blocks")
            out[fused] = multi_token_step(model, rows, tokens, shared, mode, padded)
    assert_steps_match(out[True], out[False], shared)


@needs_c
@pytest.mark.parametrize("rows, shared, padded, goals, threads", [
    (16, 5, True, 0, 1), (37, 0, False, 0, 1), (32, 10, True, 0, 2), (64, 10, False, 2, 2), (67, 5, True, 0, 2)])
def test_fused_decode_step_on_packed_weights(monkeypatch, rows, shared, padded, goals, threads):
    """With the weights packed for the step's rows (`tt::decode_pack`, as a search fetches them),
    the step computes what it does on the plain weights, to float rounding (MKL's packed GEMM
    summed as its plain GEMM did on the machines measured, but that is not its contract).
    Chunks of other sizes than packed for (67 rows: 33 and 34) run unpacked."""
    torch.manual_seed(rows)
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=3, n_head=2, n_embd=32,
                                            goal_conditioned=bool(goals))).eval()
    with torch_threads(threads):
        if not isinstance(model.block_weights(rows), ops.PackedWeights):
            pytest.skip("this torch has no MKL packed GEMM")
        out = {packed: fused_decode_step(model, rows, shared, padded, goals=goals, packed=packed)
               for packed in (True, False)}
    assert_steps_match(out[True], out[False], shared, atol=1e-6)


@needs_c
def test_decode_pack():
    """Packed weights for the row chunks of a step: 4 GEMM weights per block, then the chunks' rows;
    nothing where chunks are too small to gain; decode_layers refuses a list of another length."""
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch_threads(2):
        assert torch.ops.tt.decode_pack(model.block_weights(), 31) == []  # chunks of 15 rows
        assert isinstance(model.block_weights(31), list)
        packed = torch.ops.tt.decode_pack(model.block_weights(), 65)
    if not packed:
        pytest.skip("this torch has no MKL packed GEMM")
    assert len(packed) == 2 * 4 + 1 and packed[-1][0] == 32  # then each weight's address and version
    assert all(p.dtype == torch.uint8 and p.numel() > 0 for p in packed[:-1])
    cache = model.setup_cache(4, 20)
    step = lambda weights, packed: torch.ops.tt.decode_layers(  # noqa: E731
        torch.zeros(4, 16), weights, cache.k, cache.v, 2, 3, 0, 1, 1, None, 5, None, packed=packed)
    with pytest.raises(RuntimeError, match=r"packed must be decode_pack's output for these weights \(9 tensors\)"):
        step(model.block_weights(), packed[:4])
    wider = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch_threads(2):
        other = torch.ops.tt.decode_pack(wider.block_weights(), 65)
    with pytest.raises(RuntimeError, match="weight 2 of block 0 is another tensor than the one packed"):
        step(model.block_weights(), packed[:8] + other[8:])
    with pytest.raises(RuntimeError, match="12 weights per block"):
        torch.ops.tt.decode_pack(model.block_weights()[:5], 64)
    with torch_threads(2):
        fetched = model.block_weights(65)
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight.mul_(2)  # a weight changed in place: the packed copy is stale
    with pytest.raises(RuntimeError, match="weight 8 of block 1 is another tensor .* or has changed since"):
        ops.decode_layers(torch.zeros(4, 16), fetched, 2, cache, 3, 5)


@needs_c
def test_fused_decode_step_with_blocks_of_different_widths(monkeypatch):
    """The op allows every block its own MLP width (the checks do): a block wider than the first
    computes what the Python blocks do."""
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=3, n_head=2, n_embd=16)).eval()
    model.blocks[1].mlp.fc, model.blocks[1].mlp.proj = torch.nn.Linear(16, 96), torch.nn.Linear(96, 16)
    out = {}
    for fused in (True, False):
        ops.use(decode="fused" if fused else "blocks")
        out[fused] = fused_decode_step(model, 20, 5, False)
    assert_steps_match(out[True], out[False], 5)


@needs_c
def test_fused_decode_checks_its_arguments():
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=16)).eval()
    cache = model.setup_cache(4, 20)
    x = torch.zeros(4, 16)
    weights = model.block_weights()
    with pytest.raises(RuntimeError, match="expected 24 weights"):
        torch.ops.tt.decode_layers(x, weights[:12], cache.k, cache.v, 2, 3, 0, 1, 1, None, 5, None)
    with pytest.raises(RuntimeError, match="weight 2 of block 1 must be"):
        bad = list(weights)
        bad[14] = bad[14][:, :8]
        torch.ops.tt.decode_layers(x, bad, cache.k, cache.v, 2, 3, 0, 1, 1, None, 5, None)
    with pytest.raises(RuntimeError, match="do not fit"):
        torch.ops.tt.decode_layers(torch.zeros(5, 16), weights, cache.k, cache.v, 2, 3, 0, 1, 1, None, 5, None)
    with pytest.raises(RuntimeError, match="do not fit"):  # 3 tokens from slot 18 of 20
        torch.ops.tt.decode_layers(torch.zeros(4, 3, 16), weights, cache.k, cache.v, 2, 18, 0, 1, 1, None, 5, None)
    with pytest.raises(RuntimeError, match="shared must be >= 0"):
        torch.ops.tt.decode_layers(x, weights, cache.k, cache.v, 2, -1, -1, 1, 1, None, 5, None)
    with pytest.raises(RuntimeError, match="group_rows must be >= 1"):
        torch.ops.tt.decode_layers(x, weights, cache.k, cache.v, 2, 6, 5, 1, 0, None, 5, None)
    with pytest.raises(RuntimeError, match="key_start must be"):
        torch.ops.tt.decode_layers(x, weights, cache.k, cache.v, 2, 3, 0, 1, 1, None, 5, torch.zeros(5).long())
    with pytest.raises(RuntimeError, match="dtype of x"):
        torch.ops.tt.decode_layers(x.double(), weights, cache.k.double(), cache.v.double(), 2, 3, 0, 1, 1, None, 5,
                                   None)


def test_the_block_weights_are_named_alike_in_python_and_cpp():
    """`BlockWeights` (Python blocks, Triton) and csrc/ops.h's `BlockWeight` (the C++ decode step) name
    the same parameters in the same order."""
    from pathlib import Path

    from tt.block_weights import FIELDS, BlockWeights

    header = (Path(__file__).parents[1] / "csrc" / "ops.h").read_text()
    names = re.search(r"enum BlockWeight : int64_t \{(.*?)\};", header, re.S).group(1).replace("\n", " ")
    cpp = [n.strip() for n in names.split(",") if n.strip()]
    assert cpp == ["k" + "".join(part.capitalize() for part in f.split("_")) for f in FIELDS] + ["kWeightsPerLayer"]
    block = TrajectoryTransformer(GPTConfig(2, 1, n_bins=5, n_transitions=2, n_layer=1, n_head=1, n_embd=8)).blocks[0]
    weights = BlockWeights.of(block)
    assert weights.fc_weight is block.mlp.fc.weight and weights.attn_proj_bias is block.attn.proj.bias
