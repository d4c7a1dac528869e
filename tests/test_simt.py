"""The CUDA kernels executed on the CPU: csrc/cuda/kernels/ under the SIMT emulator (tests/simt/).

tests/simt/driver.cpp is compiled with g++ three ways (plain, ThreadSanitizer, AddressSanitizer
with UndefinedBehaviorSanitizer) and runs each kernel, with its launcher's configuration, on small
random inputs under every schedule; outputs are compared with tt/reference.py: integers, tie
orders and gathers exactly, floating-point sums within a tolerance stated per output. TSan runs
the free schedule only: the one-at-a-time schedules order every access through a token, so TSan
has nothing to see there (those schedules find races by the wrong results they cause instead).

Every case set that runs under the sanitizers holds a power-of-two vocabulary (or candidate count),
which fills the kernel's shared arrays to their last element, and odd ones. Each filter is also run
at its edges (top-k at 1, V - 1 and V; the cdf filter's cutoff), on rows and draws chosen so that
keeping one token more or fewer changes a draw. Index products that pass 2^31 (rows or plans times
their size) run emulated too: the last block of such a grid alone, over sparse arrays (the *_tail
kernels of tests/simt/driver.cpp).
"""

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tt import reference
from tt.rng import Philox

ROOT = Path(__file__).resolve().parents[1]
SIMT = ROOT / "tests" / "simt"
COMMON = ROOT / "csrc" / "cuda" / "kernels" / "common.cuh"
BUILDS = {
    "plain": [],
    "tsan": ["-fsanitize=thread"],
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
}
SCHEDULES = ["free", "forward", "reverse", "random:7"]
# (build, schedule) pairs: TSan on the free schedule only (see the module docstring)
RUNS = [pytest.param(build, schedule, id=f"{build}-{schedule}")
        for build, schedules in (("plain", SCHEDULES), ("asan", SCHEDULES), ("tsan", ["free"]))
        for schedule in schedules]
SANITIZER_ENV = {"TSAN_OPTIONS": "halt_on_error=1", "ASAN_OPTIONS": "detect_leaks=1",
                 "UBSAN_OPTIONS": "print_stacktrace=1"}

# Random123's known-answer vectors for philox4x32 with 10 rounds (its kat_vectors file):
# counter words, key words, output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.fixture(scope="session")
def drivers(tmp_path_factory) -> dict[str, Path]:
    """tests/simt/driver.cpp built once per session in each of BUILDS (in parallel)."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"{cxx} not found")
    out = tmp_path_factory.mktemp("simt")
    base = [cxx, "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", f"-I{ROOT / 'csrc'}", f"-I{SIMT}",
            str(SIMT / "driver.cpp")]
    builds = {name: subprocess.Popen([*base, *flags, "-o", str(out / name)], stderr=subprocess.PIPE, text=True)
              for name, flags in BUILDS.items()}
    for name, build in builds.items():
        _, err = build.communicate()
        assert build.returncode == 0, f"building the {name} driver failed:\n{err}"
    return {name: out / name for name in BUILDS}


def run_driver(binary: Path, kernel: str, payload: bytes, schedule: str = "free", check: bool = True,
               **env: str) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run `binary kernel` on `payload`; returns the process and its output bytes."""
    work = binary.parent / f"io-{os.getpid()}"
    work.mkdir(exist_ok=True)
    (work / "in").write_bytes(payload)
    (work / "out").unlink(missing_ok=True)
    proc = subprocess.run([str(binary), kernel, str(work / "in"), str(work / "out")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **SANITIZER_ENV, "SIMT_SCHEDULE": schedule, **env})
    if check:
        assert proc.returncode == 0, f"{binary.name} {kernel} ({schedule}) exited {proc.returncode}:\n{proc.stderr}"
    out = (work / "out").read_bytes() if (work / "out").exists() else b""
    return proc, out


def i64(*values) -> bytes:
    return np.asarray(values, dtype="<i8").tobytes()


def f64(*values) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


class Output:
    """Reads the driver's output arrays in order."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, dtype, *shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        a = np.frombuffer(self.data, dtype, n, self.at).reshape(shape)
        self.at += n * dtype.itemsize
        return a


def case_rng(*key) -> np.random.Generator:
    """Fresh inputs per test and run, reproducible from the test id."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ----------------------------------------------------------------------------- sample_next

def sample_next_cases(rng: np.random.Generator) -> list[dict]:
    """Odd sizes, batch 1, ties, extreme logits, -inf entries, a row wider than the block; powers of
    two (no padding: the shared arrays used to their last element), with top-k at V and V - 1 (the
    kernel's largest V, 1024, runs in test_sample_next_indexes_rows_past_2_31_elements)."""
    normal = rng.standard_normal
    inf_row = normal((2, 25))
    inf_row[rng.random((2, 25)) < 0.5] = -np.inf
    inf_row[:, 3] = 0.5  # at least one finite logit per row
    extreme = np.stack([normal(20) * 1e3, 1e4 + normal(20)])
    return [
        dict(logits=normal((1, 7)).astype(np.float32), temperature=1.0, top_k=None, cdf=None, mids=True),
        dict(logits=normal((3, 37)), temperature=0.8, top_k=5, cdf=0.6, mids=True),
        dict(logits=rng.integers(-2, 3, (2, 33)).astype(np.float32), temperature=1.0, top_k=4, cdf=None, mids=False),
        dict(logits=rng.integers(-2, 3, (2, 17)).astype(np.float32), temperature=0.7, top_k=None, cdf=0.85, mids=True),
        dict(logits=extreme.astype(np.float32), temperature=1.0, top_k=3, cdf=0.9, mids=True),
        dict(logits=inf_row, temperature=1.1, top_k=6, cdf=0.3, mids=False),
        dict(logits=(2 * normal((1, 300))).astype(np.float32), temperature=1.3, top_k=None, cdf=0.95, mids=True),
        dict(logits=normal((1, 2)), temperature=1.0, top_k=2, cdf=0.0, mids=True),
        dict(logits=normal((2, 64)).astype(np.float32), temperature=0.9, top_k=63, cdf=0.7, mids=True),
        *nonfinite_cases(rng),
    ]


def nonfinite_cases(rng: np.random.Generator) -> list[dict]:
    """The one policy for non-finite logits (NaN counts as -inf; +inf tokens share the mass; a row
    with no finite logit is uniform) and the cdf boundary (1 or more: no filter)."""
    rows = rng.standard_normal((6, 19))
    rows[0, [2, 7]] = np.nan  # NaN among finite logits: never drawn
    rows[1, [4, 11]] = np.inf  # two +inf tokens
    rows[1, 5] = np.nan
    rows[2] = -np.inf  # all -inf: uniform
    rows[3] = np.nan  # all NaN: as all -inf
    rows[4, ::2] = -np.inf
    rows[5, :] = np.inf  # all +inf: uniform
    return [dict(logits=rows.astype(dtype), temperature=0.9, top_k=top_k, cdf=cdf, mids=True)
            for dtype, top_k, cdf in ((np.float32, None, None), (np.float64, 3, 0.5), (np.float32, 4, 1.0))]


def sample_next_payload(case: dict, seed: int, offset: int, rows: int | None = None) -> bytes:
    """The case's rows; with `rows`, the last rows of a launch of that many (for sample_next_tail)."""
    logits = case["logits"]
    V = logits.shape[1]
    head = i64(logits.dtype.itemsize, rows or logits.shape[0], V) + f64(case["temperature"]) + i64(case["top_k"] or 0)
    head += f64(-1.0 if case["cdf"] is None else case["cdf"]) + i64(int(case["mids"]), seed, offset)
    mids = np.linspace(-1, 1, V - 1).astype(logits.dtype).tobytes() if case["mids"] else b""
    return head + logits.astype(logits.dtype.newbyteorder("<")).tobytes() + mids


def philox_uniform_rows(seed: int, offset: int, rows: np.ndarray) -> torch.Tensor:
    """reference.philox_uniform at the given row indices (any, not only 0..n-1)."""
    rows, mask = np.asarray(rows, np.uint64), 0xFFFFFFFF
    n = len(rows)
    counter = np.stack([rows & np.uint64(mask), rows >> np.uint64(32), np.full(n, offset & mask, np.uint64),
                        np.full(n, (offset >> 32) & mask, np.uint64)], axis=1)
    key = np.tile(np.array([seed & mask, (seed >> 32) & mask], np.uint64), (n, 1))
    words = reference.philox4x32_10(counter, key)
    bits = ((words[:, 0] << np.uint64(32)) | words[:, 1]) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def reference_sample(case: dict, seed: int, offset: int, first_row: int = 0):
    """The reference's tokens and expectation, and per row the tokens a kernel may draw: the
    reference's, or, where the row's uniform lies within float rounding of a cdf boundary, the
    tokens on either side of it; None where a partial sum of the sorted probabilities lies within
    rounding of the cdf threshold (the filter itself is then decided by rounding). The case's rows
    are rows first_row, first_row + 1, ... of the launch (their Philox uniforms)."""
    logits = torch.from_numpy(case["logits"])
    rows, V = logits.shape
    rng = Philox(seed)
    rng.state[1] = offset
    mids = torch.linspace(-1, 1, V - 1, dtype=logits.dtype) if case["mids"] else None
    tokens, expectation = reference.sample_next(logits, temperature=case["temperature"], top_k=case["top_k"],
                                                cdf=case["cdf"], midpoints=mids, rng=rng)
    # the same pipeline again, to see how close each row's draw and filter are to a boundary
    cdf_tol = 1e-5 if logits.dtype == torch.float32 else 1e-12
    z = reference.finite_or_minus_inf(logits / case["temperature"])
    near_cdf = torch.zeros(rows, dtype=torch.bool)
    if reference.cdf_filters(case["cdf"]):
        cum = reference.softmax(z).double().sort(-1).values.cumsum(-1)
        near_cdf = ((cum - case["cdf"]).abs() < cdf_tol).any(-1)
        z = reference.filter_cdf(z, case["cdf"])
    if case["top_k"] is not None:
        z = reference.filter_top_k(z, case["top_k"])
    cum = reference.softmax(z.double()).cumsum(-1)
    target = philox_uniform_rows(seed, offset, first_row + np.arange(rows))[:, None] * cum[:, -1:]
    if first_row:  # the reference's draw at these rows' uniforms (it draws at rows 0, 1, ...)
        tokens = torch.searchsorted(cum, target, right=True)[:, 0].clamp_max(V - 1)
    allowed = []
    for r in range(rows):
        if near_cdf[r]:
            allowed.append(None)
            continue
        near = ((cum[r] - target[r]).abs() < 1e-9).nonzero().flatten().tolist()  # boundary j: tokens j, j+1
        allowed.append({int(tokens[r])} | {t for j in near for t in (j, j + 1) if t < V})
    return tokens.numpy(), (None if expectation is None else expectation.numpy()), allowed


def check_sample_next(out: Output, case: dict, seed: int, offset: int, first_row: int = 0):
    logits = case["logits"]
    rows = logits.shape[0]
    tokens = out.take("<i8", rows)
    expectation = out.take(logits.dtype.newbyteorder("<"), rows if case["mids"] else 0)
    ref_tokens, ref_expectation, allowed = reference_sample(case, seed, offset, first_row)
    compared = [r for r in range(rows) if allowed[r] is not None]
    assert compared, "every row's filter is decided by rounding: the case checks nothing"
    for r in compared:
        assert tokens[r] in allowed[r], f"row {r}: token {tokens[r]}, reference {ref_tokens[r]} (allowed {allowed[r]})"
    if case["mids"]:  # block tree reduction against the reference's matmul
        tol = 1e-5 if logits.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(expectation, ref_expectation, rtol=tol, atol=tol)
    return tokens


@pytest.mark.parametrize("build, schedule", RUNS)
def test_sample_next_matches_the_reference(drivers, build, schedule):
    rng = case_rng("sample_next", build, schedule)
    cases = sample_next_cases(rng)
    seeds = [(int(rng.integers(0, 2**62)), int(rng.integers(0, 100))) for _ in cases]
    payload = b"".join(sample_next_payload(case, *s) for case, s in zip(cases, seeds))
    _, data = run_driver(drivers[build], "sample_next", payload, schedule)
    out = Output(data)
    for case, (seed, offset) in zip(cases, seeds):
        check_sample_next(out, case, seed, offset)
    assert out.at == len(data)


def many_draws(logits: list[float], **filters) -> dict:
    """One row repeated 48 times: 48 draws (one uniform per row) from one distribution."""
    return dict(logits=np.tile(np.asarray(logits, np.float32), (48, 1)), temperature=1.0, mids=False,
                **{"top_k": None, "cdf": None, **filters})


@pytest.mark.parametrize("case", [
    # the 5th largest (1.6) close to the 6th (1.5): keeping 4 or 6 tokens shows in the draws
    many_draws([1.6, -2.0, 2.0, 1.7, 0.0, 1.5, 1.9, -1.0, 1.8, -3.0, 0.5, 1.0], top_k=5),
    # probabilities .02 .03 .05 .10 .15 .20 .20 .25, cdf 0.5: the cutoff is the 0.15 token, which
    # must go (<= cutoff), leaving the two 0.20 tokens and the 0.25 one
    many_draws(np.log([0.15, 0.2, 0.02, 0.25, 0.05, 0.2, 0.1, 0.03]).tolist(), cdf=0.5),
    # cdf 1.0 filters nothing (csrc/sampling.h): every token appears, not the top one alone
    many_draws([0.3, 0.1, 0.0, 0.2, -0.1, 0.25], cdf=1.0),
    # NaN counts as -inf and the +inf tokens share the mass: exactly the two +inf tokens appear
    many_draws([0.3, np.inf, np.nan, 2.0, np.inf, -np.inf]),
    # no finite logit: uniform over every token
    many_draws([-np.inf, np.nan, -np.inf, -np.inf, np.nan], top_k=2),
], ids=["top_k", "cdf", "cdf-1", "nan-and-inf", "no-finite-logit"])
def test_sample_next_draws_every_kept_token_and_nothing_else(drivers, case):
    """Many draws from one row, so every token the filters keep is drawn: an off-by-one in the
    top-k threshold or a `<` for `<=` in the cdf filter changes which tokens appear, as does a
    cdf of 1 that filters, or a NaN or infinity handled otherwise than the reference does."""
    seed, offset = 20240611, 3
    _, data = run_driver(drivers["plain"], "sample_next", sample_next_payload(case, seed, offset))
    tokens = check_sample_next(Output(data), case, seed, offset)
    z = reference.finite_or_minus_inf(torch.from_numpy(case["logits"][:1]))
    z = reference.filter_cdf(z, case["cdf"]) if case["cdf"] is not None else z
    if case["top_k"] is not None:
        z = reference.filter_top_k(z, case["top_k"])
    kept = set(torch.nonzero(reference.softmax(z)[0] > 1e-30).flatten().tolist())
    assert len(kept) >= 2
    assert set(tokens.tolist()) == kept


def filter_edge_case(V: int, top_k: int | None, cdf: float | None, dtype, rows: int = 3) -> tuple[dict, int, int]:
    """Rows of distinct logits within 1 of each other, and a (seed, offset) at which a filter that keeps
    one token more, or one fewer, than the reference's (the next larger or smaller set of the most
    likely tokens) draws another token in some row: any off-by-one in the filter shows."""
    rng = case_rng("filter_edge", V, top_k, cdf)
    logits = (np.stack([rng.permutation(V) + 0.5 * rng.random(V) for _ in range(rows)]) / V).astype(dtype)
    case = dict(logits=logits, temperature=1.0, top_k=top_k, cdf=cdf, mids=False)
    z = reference.finite_or_minus_inf(torch.from_numpy(logits))  # the reference's filters, in the case's dtype
    z = reference.filter_cdf(z, cdf) if reference.cdf_filters(cdf) else z
    z = reference.filter_top_k(z, top_k) if top_k is not None else z
    kept = (reference.softmax(z) > 0).sum(-1).tolist()  # each row keeps its kept[r] most likely tokens
    x = torch.from_numpy(logits).double()
    weights, order = (x - x.max(-1, keepdim=True).values).exp(), x.argsort(-1, descending=True)

    def draws_otherwise(r: int, m: int, u: float, allowed: set[int] | None) -> bool:
        """Row r's draw at uniform u from its m most likely tokens is none the kernel may draw."""
        cum = torch.zeros(V, dtype=torch.float64).index_fill(0, order[r, :m], 1.0).mul(weights[r]).cumsum(0)
        return allowed is not None and int(torch.searchsorted(cum, u * cum[-1:], right=True).clamp_max(V - 1)) \
            not in allowed

    seed = int(rng.integers(0, 2**62))
    for offset in range(1000):
        _, _, allowed = reference_sample(case, seed, offset)
        u = reference.philox_uniform(seed, offset, rows).tolist()
        shows = []
        for change in (-1, 1):  # one token fewer, one more (where a row can: 1 <= kept <= V)
            can = [r for r in range(rows) if 1 <= kept[r] + change <= V]
            shows.append(not can or any(draws_otherwise(r, kept[r] + change, u[r], allowed[r]) for r in can))
        if all(shows):
            return case, seed, offset
    raise AssertionError(f"no offset shows an off-by-one of the filter (V={V}, top_k={top_k}, cdf={cdf})")


FILTER_EDGES = [(2, 1, None), (2, 2, None), (2, None, 0.0)] + [
    (V, top_k, cdf) for V in (33, 64)
    for top_k, cdf in ((1, None), (V - 1, None), (V, None), (None, 0.0), (None, 0.5), (None, 0.98))]


@pytest.mark.parametrize("build", ["plain", "asan"])
def test_sample_next_filters_at_their_edges(drivers, build):
    """top-k at 1, V - 1 and V; the cdf filter at 0 (drops the least likely token alone), in between,
    and near 1 (keeps the most likely one or two); for V = 2, 64 (powers of two: k = V reaches the last
    element of the sorted array, no padding before it) and 33: each case at a (seed, offset) where
    keeping one token more or fewer changes a draw (filter_edge_case)."""
    cases = [filter_edge_case(V, top_k, cdf, np.float32 if i % 2 else np.float64)
             for i, (V, top_k, cdf) in enumerate(FILTER_EDGES)]
    _, data = run_driver(drivers[build], "sample_next", b"".join(sample_next_payload(*c) for c in cases))
    out = Output(data)
    for case, seed, offset in cases:
        V = case["logits"].shape[1]
        try:
            check_sample_next(out, case, seed, offset)
        except AssertionError as e:
            raise AssertionError(f"V={V} top_k={case['top_k']} cdf={case['cdf']}: {e}") from e
    assert out.at == len(data)


# ----------------------------------------------------------------------------- beam_select

def beam_select_cases(rng: np.random.Generator) -> list[dict]:
    """Batch 1 with k = M, odd sizes, ties, +-inf, NaN (last, by index), rows all -inf or all NaN,
    groups, both score dtypes, empty terms; powers of two (64 and 2 candidates: no padding in the sort)
    with k = 1 and M - 1, odd sizes with k = M."""
    ties = rng.integers(-2, 3, (2, 64)).astype(np.float32)
    ties[0, [5, 17]], ties[1, [0, 40, 63]] = np.inf, -np.inf
    nonfinite = rng.standard_normal((5, 12))
    nonfinite[0, [1, 6, 7]], nonfinite[0, [2, 9]] = np.nan, -np.inf
    nonfinite[1, [0, 3]], nonfinite[1, 8] = np.inf, np.nan
    nonfinite[2], nonfinite[3] = -np.inf, np.nan
    nonfinite[4, ::2], nonfinite[4, 1::2] = -np.inf, np.nan
    cases = [
        dict(scores=rng.standard_normal((1, 5)).astype(np.float32), k=5, group=5, S=3, L=2, terms=np.float32),
        dict(scores=rng.standard_normal((3, 37)), k=7, group=37, S=2, L=3, terms=np.float32),
        dict(scores=ties, k=63, group=16, S=3, L=1, terms=np.float64),
        dict(scores=np.round(rng.standard_normal((1, 300)), 1), k=9, group=100, S=0, L=4, terms=np.float64),
        dict(scores=nonfinite, k=12, group=4, S=2, L=1, terms=np.float32),
        dict(scores=nonfinite.astype(np.float32), k=5, group=12, S=1, L=2, terms=np.float64),
        dict(scores=rng.standard_normal((1, 2)).astype(np.float32), k=1, group=1, S=1, L=1, terms=np.float64),
    ]
    for c in cases:
        B, M = c["scores"].shape
        c["terms"] = rng.standard_normal((B * M, c["S"])).astype(c["terms"])
        c["tokens"] = rng.integers(0, 1000, (B * M, c["L"]))
    return cases


def beam_select_payload(c: dict) -> bytes:
    B, M = c["scores"].shape
    return (i64(c["scores"].dtype.itemsize, c["terms"].dtype.itemsize, B, M, c["k"], c["group"], c["S"], c["L"])
            + c["scores"].tobytes() + c["terms"].tobytes() + c["tokens"].astype("<i8").tobytes())


@pytest.mark.parametrize("build, schedule", RUNS)
def test_beam_select_matches_the_reference_exactly(drivers, build, schedule):
    cases = beam_select_cases(case_rng("beam_select", build, schedule))
    _, data = run_driver(drivers[build], "beam_select", b"".join(map(beam_select_payload, cases)), schedule)
    out = Output(data)
    for c in cases:
        B, M = c["scores"].shape
        k, S, L = c["k"], c["S"], c["L"]
        values, indices, rows = out.take(c["scores"].dtype, B, k), out.take("<i8", B, k), out.take("<i8", B * k)
        terms, tokens = out.take(c["terms"].dtype, B * k, S), out.take("<i8", B * k, L)
        expect = reference.beam_select(torch.from_numpy(c["scores"]), k, c["group"], torch.from_numpy(c["terms"]),
                                       torch.from_numpy(c["tokens"]))
        for name, got, want in zip(("values", "indices", "rows", "terms", "tokens"),
                                   (values, indices, rows, terms, tokens), expect):
            np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{name}, B={B} M={M} k={k}")
    assert out.at == len(data)


# ----------------------------------------------------------------------------- beam_expand

def beam_expand_cases(rng: np.random.Generator) -> list[dict]:
    """Batch 1 with k = 1 and fewer candidates than threads, odd sizes with candidates striding over the
    block (4 or more per thread by the launcher), ties at the k-th score (quantized), dead beams (fewer
    finite candidates than k, a plan all -inf), NaN and +inf, -0 against +0, k = W*V, k above the
    block's threads, and the real vocabulary (101 tokens) over 512 threads; powers of two (V = 2, 64,
    128; k = 32 and 1024 fill the sort's shared array to its end) with k = W*V - 1."""
    normal = rng.standard_normal
    dead = normal((3, 4))
    dead[0, [0, 2, 3]], dead[1] = -np.inf, -np.inf
    nan_scores, nan_logp = normal((2, 3)), normal((6, 13))
    nan_scores[0, 1] = np.nan
    nan_logp[[0, 3, 5, 5], [1, 2, 12, 0]] = np.nan
    nan_logp[4, 3], nan_logp[2] = np.inf, -np.inf
    zeros = rng.choice([0.0, -0.0, -1.0], (2, 5))
    zeros_logp = rng.choice([0.0, -0.0, -0.5], (10, 9))
    cases = [
        dict(scores=normal((1, 1)), logp=normal((1, 7)), k=1),
        dict(scores=normal((3, 5)), logp=normal((15, 37)), k=7),
        dict(scores=rng.integers(-3, 1, (2, 8)), logp=np.round(normal((16, 33)) * 2) / 2, k=20),
        dict(scores=dead, logp=normal((12, 11)), k=30),
        dict(scores=nan_scores, logp=nan_logp, k=39),
        dict(scores=zeros, logp=zeros_logp, k=45),
        dict(scores=np.round(normal((2, 6))), logp=np.round(normal((12, 29))), k=150),
        dict(scores=normal((1, 16)) * 3, logp=np.log(rng.dirichlet(np.ones(101), 16)), k=16),
        dict(scores=normal((2, 4)), logp=np.round(normal((8, 64)) * 2) / 2, k=32),
        dict(scores=normal((1, 2)), logp=normal((2, 2)), k=3),
        dict(scores=normal((1, 8)), logp=normal((8, 128)), k=1023),
        dict(scores=normal((1, 8)), logp=normal((8, 128)), k=1024),
    ]
    return [dict(c, scores=np.asarray(c["scores"], np.float32), logp=np.asarray(c["logp"], np.float32)) for c in cases]


def beam_expand_payload(c: dict) -> bytes:
    (B, W), V = c["scores"].shape, c["logp"].shape[1]
    return i64(B, W, V, c["k"]) + c["scores"].astype("<f4").tobytes() + c["logp"].astype("<f4").tobytes()


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str):
    """Equal bit for bit (so -0 is not +0), NaN where the other has NaN (whatever its payload)."""
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(got[~nan].view(np.int32), want[~nan].view(np.int32), err_msg=what)


@pytest.mark.parametrize("build, schedule", RUNS)
def test_beam_expand_matches_the_reference_exactly(drivers, build, schedule):
    cases = beam_expand_cases(case_rng("beam_expand", build, schedule))
    _, data = run_driver(drivers[build], "beam_expand", b"".join(map(beam_expand_payload, cases)), schedule)
    out = Output(data)
    for c in cases:
        (B, W), V, k = c["scores"].shape, c["logp"].shape[1], c["k"]
        values, parents, tokens = out.take("<f4", B, k), out.take("<i8", B, k), out.take("<i8", B, k)
        want = reference.beam_expand(torch.from_numpy(c["scores"]), torch.from_numpy(c["logp"]), k)
        what = f"B={B} W={W} V={V} k={k}"
        assert_same_floats(values, want[0].numpy(), f"values, {what}")
        np.testing.assert_array_equal(parents, want[1].numpy(), err_msg=f"parents, {what}")
        np.testing.assert_array_equal(tokens, want[2].numpy(), err_msg=f"tokens, {what}")
    assert out.at == len(data)


# ----------------------------------------------------------------------------- Philox

@pytest.mark.parametrize("build, schedule", RUNS)
def test_philox_uniform_matches_the_reference_bit_for_bit(drivers, build, schedule):
    """Four blocks of 256 threads (the last one partial) or exactly four (1024), one thread, a block
    and one more; seeds and offsets with all bits used."""
    params = [(0, 0, 1000), (-1, -1, 1024), (0x299F31D0A4093822, 0x0370734413198A2E, 1), (12345, 2**40 + 3, 257)]
    _, data = run_driver(drivers[build], "philox_uniform", b"".join(i64(*p) for p in params), schedule)
    out = Output(data)
    for seed, offset, n in params:
        np.testing.assert_array_equal(out.take("<f8", n), reference.philox_uniform(seed, offset, n).numpy())
    assert out.at == len(data)


@pytest.mark.parametrize("where", ["python", "c++", "cuda-emulated"])
def test_philox_known_answers(request, where):
    """Random123's known answers in the three implementations of the generator: the Python
    reference, csrc/philox.h on the host, and the CUDA kernel's block (emulated)."""
    counter_key = np.array([c + k for c, k, _ in PHILOX_KAT], dtype=np.uint32)
    expected = np.array([w for _, _, w in PHILOX_KAT], dtype=np.uint32)
    if where == "python":
        got = reference.philox4x32_10(counter_key[:, :4], counter_key[:, 4:])
    else:
        drivers = request.getfixturevalue("drivers")
        kernel = "philox_host" if where == "c++" else "philox_block"
        _, data = run_driver(drivers["plain"], kernel, i64(len(PHILOX_KAT)) + counter_key.astype("<u4").tobytes())
        got = np.frombuffer(data, "<u4").reshape(-1, 4)
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- index products past 2^31

# Grids whose arrays pass 2^31 elements, just: rows or plans times their size. Each runs its last block
# alone, on full-size sparse arrays whose only data is that block's (driver.cpp, *_tail), so an index
# product computed in 32 bits reads or writes elsewhere: a wrong result, a fault (the plain build), or
# UBSan's signed overflow (the asan one). One case of each kernel has its last row or plan start at or
# past 2^31 elements; the other straddles 2^31.
TAILS = {
    # rows, V, dtype (logits [rows, V])
    "sample_next": [(2**21 + 1, 1024, np.float32), (2**31 // 101 + 1, 101, np.float64)],
    # B, M, k, group, S, L, score dtype, term dtype (scores [B, M], terms [B*M, S], tokens [B*M, L]);
    # group < M spreads a plan's candidates' rows over the whole of terms and tokens
    "beam_select": [(2**25 + 1, 64, 63, 16, 2, 1, np.float32, np.float64),
                    (2**31 // 37 + 1, 37, 5, 1, 1, 2, np.float64, np.float32)],
    # B, W, V, k (logp [B*W, V]); k = W*V puts the outputs [B, k] past 2^31 too
    "beam_expand": [(-(-(2**31) // 303) + 1, 3, 101, 303), (2**31 // 192 + 1, 3, 64, 32)],
}


def tail_run(drivers, build: str, kernel: str, payload: bytes) -> bytes:
    proc, data = run_driver(drivers[build], f"{kernel}_tail", payload, check=False)
    if proc.returncode and "cannot map" in proc.stderr:
        pytest.skip(f"no sparse arrays here (vm.overcommit_memory=2?): {proc.stderr.strip()}")
    assert proc.returncode == 0, f"{build} {kernel}_tail exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return data


@pytest.mark.parametrize("build", ["plain", "asan"])
def test_sample_next_indexes_rows_past_2_31_elements(drivers, build):
    rng = case_rng("sample_next_tail", build)
    np.testing.assert_array_equal(philox_uniform_rows(5, 7, np.arange(9)), reference.philox_uniform(5, 7, 9))
    cases = []
    for rows, V, dtype in TAILS["sample_next"]:
        assert (rows - 1) * V >= 2**31 - 128 and rows * V > 2**31
        case = dict(logits=rng.standard_normal((1, V)).astype(dtype), temperature=0.9, top_k=V - 1, cdf=0.3, mids=True)
        cases.append((case, int(rng.integers(0, 2**62)), int(rng.integers(0, 100)), rows))
    data = tail_run(drivers, build, "sample_next", b"".join(sample_next_payload(*c) for c in cases))
    out = Output(data)
    for case, seed, offset, rows in cases:
        check_sample_next(out, case, seed, offset, first_row=rows - 1)
    assert out.at == len(data)


@pytest.mark.parametrize("build", ["plain", "asan"])
def test_beam_select_indexes_plans_past_2_31_elements(drivers, build):
    rng = case_rng("beam_select_tail", build)
    cases = []
    for B, M, k, group, S, L, score_t, term_t in TAILS["beam_select"]:
        assert (B - 1) * M >= 2**31 - 128 and B * M > 2**31
        c = dict(B=B, k=k, group=group, scores=np.round(rng.standard_normal(M), 1).astype(score_t),
                 terms=rng.standard_normal((M, S)).astype(term_t), tokens=rng.integers(0, 1000, (M, L)))
        cases.append(c)
    payload = b"".join(i64(c["scores"].dtype.itemsize, c["terms"].dtype.itemsize, c["B"], len(c["scores"]), c["k"],
                           c["group"], *c["terms"].shape[1:], c["tokens"].shape[1])
                       + c["scores"].tobytes() + c["terms"].tobytes() + c["tokens"].astype("<i8").tobytes()
                       for c in cases)
    out = Output(tail_run(drivers, build, "beam_select", payload))
    for c in cases:
        B, k, group, (M, S), L = c["B"], c["k"], c["group"], c["terms"].shape, c["tokens"].shape[1]
        values, indices = reference.beam_select(torch.from_numpy(c["scores"][None]), k)[:2]
        m = indices[0].numpy()
        what = f"B={B} M={M} k={k} group={group}"
        np.testing.assert_array_equal(out.take(c["scores"].dtype, k), values[0].numpy(), err_msg=f"values, {what}")
        np.testing.assert_array_equal(out.take("<i8", k), m, err_msg=f"indices, {what}")
        rows = (m // group) * B * group + (B - 1) * group + m % group
        np.testing.assert_array_equal(out.take("<i8", k), rows, err_msg=f"rows, {what}")
        np.testing.assert_array_equal(out.take(c["terms"].dtype, k, S), c["terms"][m], err_msg=f"terms, {what}")
        np.testing.assert_array_equal(out.take("<i8", k, L), c["tokens"][m], err_msg=f"tokens, {what}")
    assert out.at == len(out.data)


@pytest.mark.parametrize("build", ["plain", "asan"])
def test_beam_expand_indexes_plans_past_2_31_candidates(drivers, build):
    """The issue's case: logp + b * N in 32 bits, for B*W*V just over 2^31."""
    rng = case_rng("beam_expand_tail", build)
    cases = []
    for B, W, V, k in TAILS["beam_expand"]:
        assert (B - 1) * W * V >= 2**31 - 128 and B * W * V > 2**31
        cases.append(dict(B=B, k=k, scores=rng.standard_normal((1, W)).astype(np.float32),
                          logp=np.round(rng.standard_normal((W, V)), 1).astype(np.float32)))
    payload = b"".join(i64(c["B"], *c["logp"].shape, c["k"]) + c["scores"].tobytes() + c["logp"].tobytes()
                       for c in cases)
    out = Output(tail_run(drivers, build, "beam_expand", payload))
    for c in cases:
        k, what = c["k"], f"B={c['B']} W={c['logp'].shape[0]} V={c['logp'].shape[1]} k={c['k']}"
        values, parents, tokens = out.take("<f4", k), out.take("<i8", k), out.take("<i8", k)
        want = reference.beam_expand(torch.from_numpy(c["scores"]), torch.from_numpy(c["logp"]), k)
        assert_same_floats(values, want[0][0].numpy(), f"values, {what}")
        np.testing.assert_array_equal(parents, want[1][0].numpy(), err_msg=f"parents, {what}")
        np.testing.assert_array_equal(tokens, want[2][0].numpy(), err_msg=f"tokens, {what}")
    assert out.at == len(out.data)


# ----------------------------------------------------------------------------- the harness can fail

def final_reduction_barrier() -> str:
    """FILE:LINE of block_reduce's last __syncthreads (the one that guards the scratch reuse)."""
    lines = COMMON.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "const T result = scratch[0];" in line)
    assert "__syncthreads();" in lines[at + 1]
    return f"{COMMON.name}:{at + 2}"


RACE_CASE = dict(logits=np.random.default_rng(5).standard_normal((2, 37)).astype(np.float32), temperature=1.0,
                 top_k=None, cdf=None, mids=True)


def test_dropped_barrier_gives_wrong_results_under_the_forward_schedule(drivers):
    """Without block_reduce's final barrier, thread 0 overwrites the scratch slot of one reduction
    with the next one's partial sum before warp 1 has read it; the forward schedule always does."""
    payload = sample_next_payload(RACE_CASE, 1, 0)
    dropped = final_reduction_barrier()
    _, data = run_driver(drivers["plain"], "sample_next", payload, "forward", SIMT_DROP_BARRIER=dropped)
    with pytest.raises(AssertionError):
        check_sample_next(Output(data), RACE_CASE, 1, 0)
    _, data = run_driver(drivers["plain"], "sample_next", payload, "forward")  # and with the barrier, all is well
    check_sample_next(Output(data), RACE_CASE, 1, 0)


def test_dropped_barrier_is_a_data_race_for_tsan(drivers):
    proc, _ = run_driver(drivers["tsan"], "sample_next", sample_next_payload(RACE_CASE, 1, 0), check=False,
                         SIMT_DROP_BARRIER=final_reduction_barrier())
    assert proc.returncode != 0
    assert "ThreadSanitizer: data race" in proc.stderr and "common.cuh" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("kernel", ["sample_next", "beam_select", "beam_expand"])
def test_shared_memory_four_bytes_short_is_an_overflow_for_asan(drivers, kernel):
    """Power-of-two sizes, so the last bytes of the dynamic shared memory are written (beam_expand:
    its selection state, last, is written in every pass)."""
    if kernel == "sample_next":
        case = dict(logits=np.zeros((1, 64), np.float32), temperature=1.0, top_k=None, cdf=None, mids=False)
        payload = sample_next_payload(case, 1, 0)
    elif kernel == "beam_expand":
        rng = np.random.default_rng(0)
        payload = beam_expand_payload(dict(scores=rng.standard_normal((1, 4)).astype(np.float32),
                                           logp=rng.standard_normal((4, 9)).astype(np.float32), k=3))
    else:
        rng = np.random.default_rng(0)
        payload = beam_select_payload(dict(scores=rng.standard_normal((1, 64)), k=3, group=64, S=1, L=1,
                                           terms=np.zeros((64, 1)), tokens=np.zeros((64, 1), np.int64)))
    run_driver(drivers["asan"], kernel, payload)  # the launch's size is fine
    proc, _ = run_driver(drivers["asan"], kernel, payload, check=False, SIMT_SHARED_SHORT="4")
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- the emulator itself

def selftest(drivers, name: int, threads: int, blocks: int = 1, build: str = "plain", schedule: str = "free",
             check: bool = True):
    return run_driver(drivers[build], "selftest", i64(name, threads, blocks), schedule, check=check)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_emulator_shuffles_follow_cudas_lane_rules(drivers, schedule):
    """__shfl_sync / _up / _down / _xor for every width, as the CUDA programming guide states them:
    lanes in groups of `width`; a source outside the lane's group gives its own value (for xor:
    only a later group), __shfl_sync wraps the source lane within the group."""
    threads = 64
    _, data = selftest(drivers, 0, threads, schedule=schedule)
    got = np.frombuffer(data, "<i4").reshape(4, 6, threads)
    t = np.arange(threads)
    lane, base = t % 32, t - t % 32
    for w in range(6):
        width = 2**w
        group = lane // width * width
        src = [group + (3 * lane + 1) % width,
               np.where(lane % width >= 3, lane - 3, lane),
               np.where(lane % width + 5 < width, lane + 5, lane),
               np.where((lane ^ 6) >= group + width, lane, lane ^ 6)]
        for op in range(4):
            np.testing.assert_array_equal(got[op, w], 100 * (base + src[op]), err_msg=f"op {op}, width {width}")


@pytest.mark.parametrize("build", ["plain", "tsan"])
def test_emulator_atomics_are_atomic(drivers, build):
    _, data = selftest(drivers, 1, 256, blocks=3, build=build)
    counters, total = np.frombuffer(data[:20], "<i4"), np.frombuffer(data[20:], "<f4")
    assert counters.tolist() == [768, 767, -255, 1536, 7] and total.tolist() == [384.0]


@pytest.mark.parametrize("schedule", ["free", "forward"])
@pytest.mark.parametrize("name, message", [
    (2, "at different barriers"),
    (3, "already finished|finished while"),
    (4, "shuffle mask 0x0000ffff"),
], ids=["divergent-barriers", "early-exit", "partial-mask"])
def test_emulator_refuses_what_cuda_leaves_undefined(drivers, name, message, schedule):
    proc, _ = selftest(drivers, name, 64, schedule=schedule, check=False)
    assert proc.returncode != 0
    assert any(m in proc.stderr for m in message.split("|")), proc.stderr
