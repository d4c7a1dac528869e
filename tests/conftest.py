"""Shared fixtures: a private Minari directory and small built-in data sets."""

import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Differential fuzzing (tests/test_fuzz.py): `fast` by default, `--hypothesis-profile=deep` in CI.
# Derandomized (the same examples every run), no example database, no deadline (shared machines).
_fuzz = dict(derandomize=True, database=None, deadline=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fast", max_examples=40, **_fuzz)
settings.register_profile("deep", max_examples=500, **_fuzz)
settings.load_profile("fast")

# Before anything imports minari or triton: tests never touch the user's data sets.
os.environ["MINARI_DATASETS_PATH"] = tempfile.mkdtemp(prefix="tt-minari-")
os.environ.setdefault("MPLBACKEND", "Agg")
if not torch.cuda.is_available():  # Triton kernels run in the interpreter on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config):
    """With TT_REQUIRE_COMPILED=1 (CI sets it) a missing or stale tt._C ends the run at once, instead of
    every compiled-backend test skipping silently and the suite passing on the references alone."""
    if os.environ.get("TT_REQUIRE_COMPILED") == "1":
        from tt import ops

        if not ops.compiled_library():
            pytest.exit("TT_REQUIRE_COMPILED=1, but tt._C is not built or is stale (see the warning above): "
                        "the compiled ops' tests would all be skipped", returncode=3)


@pytest.fixture(scope="session")
def pendulum_medium():
    """A 12-episode Pendulum medium data set (200 steps each, truncations only)."""
    from tt.tasks import make_dataset

    return make_dataset("pendulum-medium", episodes=12, seed=0, progress=False)


@pytest.fixture(scope="session")
def inverted_pendulum_medium():
    """A small InvertedPendulum medium data set (with real terminations)."""
    from tt.tasks import make_dataset

    return make_dataset("invertedpendulum-medium", episodes=8, seed=0, progress=False)


@pytest.fixture(autouse=True)
def restore_op_choices():
    """Tests choose backends with `ops.use(...)`; each test starts from, and leaves, the process's choices."""
    from tt import ops

    before = ops.choices()
    yield
    ops.use(**vars(before))


@pytest.fixture(params=["compiled", "reference"])
def backend(request, monkeypatch):
    """Run a test on tt._C's ops ("compiled", skipped where it is not built) and on the reference."""
    from tt import ops

    if request.param == "compiled" and not ops.compiled_library():
        pytest.skip("tt._C is not built")
    ops.use(backend="auto" if request.param == "compiled" else "reference")
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny plans are latency-bound: one torch thread keeps them quick on a busy machine (and is
    what each torchrun rank has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
