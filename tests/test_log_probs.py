"""tt::log_probs, the likelihood search's filtered log-softmax, against tt/reference.py: the C++ op on
fresh random inputs over shapes, temperatures and filters, with ties, extreme and non-finite logits;
every output written; the argument checks of the wrapper and of the raw op; the fake implementation.

Tolerance: the op adds and rounds as torch's CPU kernels do (csrc/cpu/log_probs.cpp), so where it can
reach torch's vector math (x86) it must equal the reference bit for bit (so every tie too); elsewhere
to float rounding (rtol = atol = 1e-6 for float32, 1e-12 for float64). Everywhere exactly: which
entries are -inf, that tied logits stay tied, and which entries the cdf filter dropped (-1000). Off x86
the op's probabilities may round otherwise than torch's, so a row whose running sum came within a
rounding of cdf could be filtered otherwise; these random inputs make that improbable.
"""

import ctypes
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from tt import ops, reference

HAS_C = ops.compiled_library()
needs_c = pytest.mark.skipif(not HAS_C, reason="tt._C is not built (or lacks tt::log_probs)")

nan, inf = float("nan"), float("inf")
SLEEF = ("Sleef_expf16_u10", "Sleef_logf16_u10", "Sleef_expd8_u10", "Sleef_logd8_u10",
         "Sleef_expf8_u10", "Sleef_logf8_u10", "Sleef_expd4_u10", "Sleef_logd4_u10")


def torch_vector_math() -> bool:
    """Whether the op rounds as torch does here: x86, and libtorch_cpu exports the Sleef functions its
    kernels call (without them torch's DEFAULT kernels still match, the AVX2/AVX512 ones need them)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        return True
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    except OSError:
        return False
    return all(hasattr(lib, name) for name in SLEEF)


BIT_EXACT = torch_vector_math()


def scaled(logits, temperature):
    """The reference's logits after temperature and NaN as -inf (float64 stays float64, the rest float32)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    return reference.finite_or_minus_inf(x / temperature)


def assert_matches(got, want, logits, temperature, cdf=None, check_dropped=True):
    """Bit for bit where BIT_EXACT, else to float rounding; never NaN; the -inf entries exactly; tied
    logits stay tied; the entries the cdf filter dropped (-1000: one value per row, unless top-k made
    them -inf) exactly as the reference's (`check_dropped`; not where +-1e30 absorbs the -1000)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not got.isnan().any()
    assert torch.equal(got.isneginf(), want.isneginf())
    z = scaled(logits, temperature)
    assert (got[:, :, None] == got[:, None, :])[z[:, :, None] == z[:, None, :]].all(), "tied logits must stay tied"
    if check_dropped and reference.cdf_filters(cdf):
        dropped = (reference.filter_cdf(z, cdf) == -1000.0) & (z != -1000.0)
        finite = dropped & got.isfinite()  # the rest top-k made -inf
        low = torch.where(finite, got, inf).amin(1, keepdim=True)
        rows = finite.any(1)
        assert torch.equal(finite[rows], ((got == low) & got.isfinite())[rows]), "the cdf filter dropped others"
    if BIT_EXACT:
        bits = torch.int32 if got.dtype == torch.float32 else torch.int64
        assert torch.equal(got.view(bits), want.view(bits)), f"not bit for bit: {(got - want).abs().max()}"
    else:
        tol = 1e-6 if got.dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def random_logits(R, V, seed, dtype=torch.float32, kind="plain"):
    """plain: N(0, 3^2); ties: rounded to halves, so many tie, whole rows equal, one row all equal;
    extreme: plain with +-1e30, +-inf, NaN, and rows without a finite logit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, V, generator=g, dtype=torch.float64) * 3
    if kind == "ties":
        x = torch.round(x * 2) / 2
        x[R // 2 :] = x[: R - R // 2].clone()
        x[0] = 1.5
    elif kind == "extreme":
        pick = torch.rand(R, V, generator=g)
        x[pick < 0.05] = 1e30
        x[(pick >= 0.05) & (pick < 0.1)] = -1e30
        x[(pick >= 0.1) & (pick < 0.15)] = -inf
        x[(pick >= 0.15) & (pick < 0.2)] = nan
        x[(pick >= 0.2) & (pick < 0.22)] = inf
        x[0] = -inf
        if R > 1:
            x[1] = nan
        if R > 2:
            x[2, ::2], x[2, 1::2] = -inf, nan
    return x.to(dtype)


SHAPES = [(R, V) for R in (1, 3, 64, 130) for V in (2, 7, 64, 101, 257)]  # 64: whole vectors, no masked tail
FILTERS = [(top_k, cdf) for top_k in (None, 1, 3, "V-1", "V") for cdf in (None, 0.0, 0.3, 0.6, 0.99, 1.0)]
TEMPERATURES = (1.0, 0.7, 1.9)


@needs_c
@pytest.mark.parametrize("kind", ["plain", "ties", "extreme"])
@pytest.mark.parametrize("R, V", SHAPES)
def test_compiled_log_probs_equals_the_reference(R, V, kind, monkeypatch):
    ops.use(backend="auto")
    for i, (top_k, cdf) in enumerate(FILTERS):
        k = {"V": V, "V-1": V - 1}.get(top_k, top_k)
        if k is not None and k > V:
            continue
        temperature = TEMPERATURES[i % len(TEMPERATURES)]
        logits = random_logits(R, V, seed=R * 1000 + V * 10 + i, kind=kind)  # fresh for every filter
        got = ops.log_probs(logits, temperature, k, cdf)
        want = reference.log_probs(logits, temperature, k, cdf)
        try:
            assert_matches(got, want, logits, temperature, cdf, check_dropped=kind != "extreme")
        except AssertionError as e:
            raise AssertionError(f"top_k={k}, cdf={cdf}, temperature={temperature}: {e}") from e


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cdf_boundary_is_strict(dtype, monkeypatch):
    """cdf set to one of the reference's own running sums: that position is not below cdf, so it
    keeps one token more than a cdf a rounding larger (the op must round its sums as torch does)."""
    ops.use(backend="auto")
    for seed in range(12):
        logits = random_logits(1, 101, seed=seed, dtype=dtype)
        cum = torch.cumsum(torch.sort(reference.softmax(scaled(logits, 1.0))).values, -1)
        cdf = cum[0, 20 + 6 * seed].item()
        larger = torch.nextafter(cum[0, 20 + 6 * seed], torch.tensor(2.0, dtype=cum.dtype)).item()
        want = reference.log_probs(logits, 1.0, None, cdf)
        assert not torch.equal(want, reference.log_probs(logits, 1.0, None, larger))  # the boundary is hit
        assert_matches(ops.log_probs(logits, 1.0, None, cdf), want, logits, 1.0, cdf)
        assert_matches(ops.log_probs(logits, 1.0, None, larger), reference.log_probs(logits, 1.0, None, larger),
                       logits, 1.0, larger)


@needs_c
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("top_k, cdf", [(None, 0.6), (3, None), (2, 0.3), (None, None)])
def test_compiled_log_probs_dtypes(dtype, top_k, cdf, monkeypatch):
    """float64 runs in double; float16 and bfloat16 are upcast to float32, as the reference does."""
    ops.use(backend="auto")
    logits = random_logits(37, 101, seed=5, dtype=dtype)
    got = ops.log_probs(logits, 0.8, top_k, cdf)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_matches(got, reference.log_probs(logits, 0.8, top_k, cdf), logits, 0.8, cdf)


@needs_c
def test_ties_stay_ties_and_equal_rows_are_equal(monkeypatch):
    ops.use(backend="auto")
    row = torch.tensor([2.0, -1.0, 2.0, 0.5, 0.5, -1.0, 2.0, 0.0, -3.0, 0.5])
    logits = torch.stack([row, row, row.flip(0), torch.zeros(10), torch.full((10,), 7.0)])
    for top_k, cdf in [(None, None), (1, None), (4, None), (None, 0.3), (None, 0.6), (2, 0.99), (None, 0.0)]:
        got = ops.log_probs(logits, 1.0, top_k, cdf)
        assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2].flip(0))
        assert torch.equal(got[3], got[4]) and (got[3] == got[3, 0]).all()  # equal logits: uniform
        assert_matches(got, reference.log_probs(logits, 1.0, top_k, cdf), logits, 1.0, cdf)
        ties = row[:, None] == row[None, :]
        assert ((got[0][:, None] == got[0][None, :]) | ~ties).all()  # tied logits stay tied


@needs_c
def test_extreme_and_nonfinite_logits_are_defined(monkeypatch):
    """+inf tokens share the mass, NaN counts as -inf, a row without a finite logit is uniform,
    +-1e30 (and 1e38 / 0.5, which overflows to +inf) behave as the reference."""
    ops.use(backend="auto")
    logits = torch.tensor([[inf, inf, 0.0, -inf], [-inf, -inf, -inf, -inf], [nan, nan, nan, nan],
                           [nan, -inf, nan, -inf], [1e30, -1e30, 0.0, 1e30], [1e38, 3.0, nan, -1e38],
                           [-1e30, -1e30, -1e30, -1e30], [5.0, nan, inf, 4.0]])
    for temperature in (1.0, 0.5):
        for top_k, cdf in [(None, None), (1, None), (2, 0.6), (None, 0.3), (4, 0.0)]:
            got = ops.log_probs(logits, temperature, top_k, cdf)
            want = reference.log_probs(logits, temperature, top_k, cdf)
            assert_matches(got, want, logits, temperature, cdf, check_dropped=False)
    got = ops.log_probs(logits, 1.0)
    assert got[0, :2].tolist() == [-torch.log(torch.tensor(2.0)).item()] * 2 and got[0, 2:].isneginf().all()
    assert (got[1:4] == -torch.log(torch.tensor(4.0))).all()


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("top_k, cdf", [(0, -1.0), (1, -1.0), (5, 0.6), (0, 0.0)])
def test_compiled_op_writes_every_output(dtype, top_k, cdf):
    """out poisoned with NaN before the raw op runs: every element must be written."""
    logits = random_logits(33, 23, seed=11, dtype=dtype)
    out = torch.full_like(logits, nan)
    torch.ops.tt.log_probs(logits, 1.3, top_k, cdf, out)
    want = reference.log_probs(logits, 1.3, top_k or None, None if cdf < 0 else cdf)
    assert_matches(out, want, logits, 1.3, None if cdf < 0 else cdf)


@needs_c
def test_many_rows_run_in_parallel_as_one(monkeypatch):
    """Enough rows for several threads: the same values as the reference and as one thread."""
    ops.use(backend="auto")
    logits = random_logits(1500, 101, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = ops.log_probs(logits, 1.0, None, 0.6)
        torch.set_num_threads(1)
        one = ops.log_probs(logits, 1.0, None, 0.6)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, one)
    assert_matches(got, reference.log_probs(logits, 1.0, None, 0.6), logits, 1.0, 0.6)


@needs_c
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="torch's x86 kernels only")
def test_bit_exact_under_each_torch_capability():
    """torch picks its kernels by ATEN_CPU_CAPABILITY (read at start-up): the op follows it."""
    script = (
        "import torch; from tt import ops, reference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for V in (2, 15, 16, 17, 101):\n"
        "    for dtype in (torch.float32, torch.float64):\n"
        "        x = (torch.randn(40, V, generator=g, dtype=torch.float64) * 3).to(dtype)\n"
        "        for k, cdf in ((None, None), (1, None), (None, 0.6), (min(3, V), 0.3)):\n"
        "            a, b = ops.log_probs(x, 0.9, k, cdf), reference.log_probs(x, 0.9, k, cdf)\n"
        "            assert torch.equal(a, b), (V, dtype, k, cdf)\n"
        "print(torch.backends.cpu.get_cpu_capability(), ops.backends()['log_probs']['cpu'])\n")
    for capability in ("default", "avx2") if BIT_EXACT else ("default",):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "TT_BACKEND": "", "OMP_NUM_THREADS": "1"}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split()[-1] == "C++", run.stdout


def test_wrapper_refuses_bad_arguments():
    logits = torch.zeros(2, 5)
    bad = [
        ((torch.zeros(5),), {}, "logits \\[rows, N\\+1\\], got \\(5,\\)"),
        ((torch.zeros(2, 1),), {}, "logits \\[rows, N\\+1\\], got \\(2, 1\\)"),
        ((logits, 0.0), {}, "temperature must be > 0 and finite, got 0.0"),
        ((logits, -1.0), {}, "temperature must be > 0"),
        ((logits, inf), {}, "temperature must be > 0 and finite, got inf"),
        ((logits, nan), {}, "temperature must be > 0"),
        ((logits, 1.0, 0), {}, "top_k must be None or an integer in \\[1, 5\\], got 0"),
        ((logits, 1.0, 6), {}, "top_k must be None or an integer in \\[1, 5\\], got 6"),
        ((logits, 1.0, 2.5), {}, "top_k must be None or an integer in \\[1, 5\\], got 2.5"),
        ((logits, 1.0, True), {}, "top_k must be None or an integer"),
        ((logits, 1.0, None, -0.1), {}, "cdf must be None or in \\[0, 1\\], got -0.1"),
        ((logits, 1.0, None, 1.5), {}, "cdf must be None or in \\[0, 1\\], got 1.5"),
        ((logits, 1.0, None, nan), {}, "cdf must be None or in \\[0, 1\\]"),
    ]
    for args, kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            ops.log_probs(*args, **kwargs)
    assert ops.log_probs(logits, 1.0, np.int64(2), 1.0).shape == (2, 5)


@needs_c
def test_compiled_op_checks_its_arguments():
    logits, out = torch.zeros(4, 6), torch.empty(4, 6)
    op = torch.ops.tt.log_probs
    bad = [
        ((torch.zeros(6), 1.0, 0, -1.0, out), "logits must be \\[rows, N\\+1\\], got \\[6\\]"),
        ((logits.long(), 1.0, 0, -1.0, out), "logits must be float32 or float64 .*got Long"),
        ((logits.half(), 1.0, 0, -1.0, out.half()), "logits must be float32 or float64 .*got Half"),
        ((torch.zeros(6, 4).T, 1.0, 0, -1.0, out), "logits must be contiguous"),
        ((torch.zeros(4, 1), 1.0, 0, -1.0, torch.empty(4, 1)), "at least 2 columns"),
        ((logits, 0.0, 0, -1.0, out), "temperature must be > 0 and finite, got 0"),
        ((logits, inf, 0, -1.0, out), "temperature must be > 0 and finite, got inf"),
        ((logits, 1.0, 7, -1.0, out), "top_k must be <= 6, got 7"),
        ((logits, 1.0, 0, 1.5, out), "cdf must be <= 1, got 1.5"),
        ((logits, 1.0, 0, -1.0, out[:3]), "out must have shape \\[4, 6\\], got \\[3, 6\\]"),
        ((logits, 1.0, 0, -1.0, out.double()), "out must have the dtype of logits \\(Float\\), got Double"),
        ((logits, 1.0, 0, -1.0, torch.empty(6, 4).T), "out must be contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


@needs_c
def test_fake_implementation_traces():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.library import opcheck

    logits = random_logits(5, 9, seed=2)
    opcheck(torch.ops.tt.log_probs.default, (logits, 0.9, 3, 0.5, torch.empty(5, 9)),
            test_utils=("test_schema", "test_faketensor"))
    with FakeTensorMode() as mode:
        got = ops.log_probs(mode.from_tensor(logits), 0.9, 3, 0.5)
    assert got.shape == (5, 9) and got.dtype == torch.float32


def test_backends_and_fallbacks(monkeypatch):
    """The op runs on CPU where tt._C has it; the reference with `ops.use(backend="reference")`, for a gradient,
    and on devices without a kernel (meta here, CUDA in general)."""
    assert ops.backends()["log_probs"] == {"cpu": "C++" if HAS_C else "reference", "cuda": "reference"}
    logits = random_logits(3, 7, seed=4).requires_grad_()
    got = ops.log_probs(logits, 1.0, 2, 0.6)  # differentiable: the reference's ops
    got[torch.isfinite(got)].sum().backward()
    assert logits.grad is not None and logits.grad.isfinite().all()
    assert ops.log_probs(torch.zeros(2, 5, device="meta"), 1.0, 1).device.type == "meta"
    ops.use(backend="reference")
    assert ops.backends()["log_probs"]["cpu"] == "reference"
    assert torch.equal(ops.log_probs(logits.detach(), 1.0, 2, 0.6), reference.log_probs(logits.detach(), 1.0, 2, 0.6))


@pytest.mark.parametrize("R", [0, 1])
def test_edge_sizes(backend, R):
    got = ops.log_probs(torch.zeros(R, 2), 1.0, 1, 0.5)
    assert got.shape == (R, 2)
    if R:
        assert torch.equal(got, reference.log_probs(torch.zeros(1, 2), 1.0, 1, 0.5))
