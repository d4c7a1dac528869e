"""Compile every Triton kernel of tt for a GPU without one: the launchers run on CPU tensors at
the shapes tt uses, each kernel is compiled for the target (PTX and cubin, by Triton's own
ptxas) instead of launched, and ptxas' register and spill counts are printed per kernel.

The interpreter that runs the kernels in the CPU tests accepts programs the compiler rejects;
this catches those without a GPU. Run with TRITON_INTERPRET unset:

    python tests/compile_triton.py [--arch 90] [--shard K/N]

(`--shard K/N`: cases K, K+N, ... only, for N processes sharing the work.)

Prints one line per compiled kernel (`name dtype: N registers, S bytes spilled`) and exits 1 if
any launcher fails to compile.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import traceback

os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas' report on stdout (read from the file below)
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tt-triton-")  # compile afresh, so ptxas reports

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class CompileOnlyDriver:
    """What a JIT launch asks of the driver, for a GPU that is not there."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def compile_instead_of_launch(kernels: list[JITFunction], compiled: list[str]) -> None:
    """Launches of `kernels` compile (warmup) and return without running."""
    for kernel in kernels:
        def run(*args, grid, warmup, _kernel=kernel, _run=kernel.run, **kwargs):
            result = _run(*args, grid=grid, warmup=True, **kwargs)
            compiled.append(_kernel.__name__)
            return result

        kernel.run = run


def cases():
    """(name, launch) pairs: every launcher at tt's shapes, fp32 and bf16."""
    from tt.kernels import attention, decode

    from tt.model import GPTConfig, TrajectoryTransformer

    def randn(*shape, dtype):
        return torch.randn(*shape).to(dtype)

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")

        def train(dtype=dtype, dropout=0.0):  # training windows: forward and fused backward
            q, k, v = (randn(2, 4, 159, 32, dtype=dtype).requires_grad_() for _ in range(3))
            attention.attention(q, k, v, transition_dim=16, dropout_p=dropout, seed=1).sum().backward()

        def split_decode(dtype=dtype):  # one query per row against a cache, keys split, padded rows
            q, k, v = (randn(256, 4, n, 32, dtype=dtype) for n in (1, 79, 79))
            attention.attention_forward(q, k, v, 16, q_offset=78, key_start=torch.zeros(256, dtype=torch.long))

        def after_prefix(dtype=dtype):
            q, k, v = (randn(256, 4, n, 32, dtype=dtype) for n in (1, 12, 12))
            pk, pv = (randn(1, 4, 64, 32, dtype=dtype) for _ in range(2))
            attention.decode_after_prefix(q, k, v, pk, pv, 128, 16, 75, torch.zeros(256, dtype=torch.long))

        def after_prefix_rows(dtype=dtype):  # every row reads the prefix its row table names
            q, k, v = (randn(256, 4, n, 32, dtype=dtype) for n in (1, 12, 12))
            pk, pv = (randn(256, 4, 64, 32, dtype=dtype) for _ in range(2))
            attention.decode_after_prefix(q, k, v, pk, pv, 1, 16, 75, torch.zeros(256, dtype=torch.long),
                                          prefix_rows=torch.randperm(256))

        def goal(goal_rows=None, dtype=dtype):  # a goal segment [2, G, h, O, D] at Hopper shapes, two goals
            kv = randn(2, 2, 4, 11, 32, dtype=dtype)
            return dict(goal_k=kv[0], goal_v=kv[1], goal_group_rows=128, goal_rows=goal_rows)

        def goal_prefill(dtype=dtype):  # a goal model's prefill: windows of 4 transitions, padded rows
            q, k, v = (randn(256, 4, 63, 32, dtype=dtype) for _ in range(3))
            attention.attention_forward(q, k, v, 16, key_start=torch.zeros(256, dtype=torch.long),
                                        **goal(dtype=dtype))

        def goal_split_decode(dtype=dtype):  # one query per row, keys split, goals by a row table
            q, k, v = (randn(256, 4, n, 32, dtype=dtype) for n in (1, 79, 79))
            attention.attention_forward(q, k, v, 16, q_offset=78, splits=2, **goal(torch.randint(0, 2, (256,)), dtype))

        def goal_after_prefix(dtype=dtype, prefix_rows=None, goal_rows=None):
            G = 1 if prefix_rows is None else 256
            q, k, v = (randn(256, 4, n, 32, dtype=dtype) for n in (1, 12, 12))
            pk, pv = (randn(G, 4, 64, 32, dtype=dtype) for _ in range(2))
            attention.decode_after_prefix(q, k, v, pk, pv, 256 // G, 16, 75, torch.zeros(256, dtype=torch.long),
                                          prefix_rows=prefix_rows, **goal(goal_rows, dtype))

        def decode_step(dtype=dtype, key_start=None, prefix_rows=None, goal_rows=None, with_goal=False):
            model = TrajectoryTransformer(GPTConfig(11, 3)).to(dtype)  # the published model at Hopper shapes
            kv = model.setup_cache(256).kv
            groups = 1 if prefix_rows is None else 256
            goal_kv = randn(2, 4, 2, 4, 11, 32, dtype=dtype) if with_goal else None  # two goals of all layers
            decode.decode_layers(randn(256, 128, dtype=dtype), decode.stack_weights(model.block_weights()), 4, kv,
                                 75, 64, groups, 128, 16, key_start, prefix_rows=prefix_rows, goal_kv=goal_kv,
                                 goal_group_rows=128, goal_rows=goal_rows)

        yield f"training attention {name}", train
        yield f"training attention with dropout {name}", lambda train=train: train(dropout=0.1)
        yield f"split decode attention {name}", split_decode
        yield f"decode after a shared prefix {name}", after_prefix
        yield f"decode step {name}", decode_step
        yield f"decode step, padded rows {name}", lambda d=decode_step: d(key_start=torch.zeros(256, dtype=torch.long))
        yield f"decode after a prefix row table {name}", after_prefix_rows
        yield f"decode step, prefix row table {name}", lambda d=decode_step: d(prefix_rows=torch.randperm(256))
        yield f"prefill with a goal {name}", goal_prefill
        yield f"split decode attention with a goal table {name}", goal_split_decode
        yield f"decode after a shared prefix with a goal {name}", goal_after_prefix
        yield f"decode after a prefix row table with a goal table {name}", lambda d=goal_after_prefix: d(
            prefix_rows=torch.randperm(256), goal_rows=torch.randint(0, 2, (256,)))
        yield f"decode step with a goal {name}", lambda d=decode_step: d(with_goal=True)
        yield f"decode step, prefix and goal row tables {name}", lambda d=decode_step: d(
            prefix_rows=torch.randperm(256), goal_rows=torch.randint(0, 2, (256,)), with_goal=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--shard", default="0/1", help="K/N: compile only cases K, K+N, K+2N, ... (N processes "
                        "share the work)")
    args = parser.parse_args()
    try:
        k, n = map(int, args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard takes K/N, got {args.shard!r}")
    if not 0 <= k < n:
        parser.error(f"--shard K/N needs 0 <= K < N, got {args.shard}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter never compiles")
    from tt.kernels import attention, decode

    kernels = [f for module in (attention, decode) for f in vars(module).values() if isinstance(f, JITFunction)]
    compiled: list[str] = []
    compile_instead_of_launch(kernels, compiled)
    triton.runtime.driver.set_active(CompileOnlyDriver(args.arch))
    failures = 0
    for i, (name, launch) in enumerate(cases()):
        if i % n != k:
            continue
        log = tempfile.TemporaryFile(mode="w+")
        saved = os.dup(1)
        sys.stdout.flush()
        os.dup2(log.fileno(), 1)  # ptxas' report is printed while compiling
        try:
            launch()
            error = None
        except Exception:
            error = traceback.format_exc()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        report = log.read()
        if error:
            failures += 1
            print(f"FAILED {name}\n{error}")
            continue
        regs = re.findall(r"Used (\d+) registers", report)
        spills = re.findall(r"(\d+) bytes spill stores", report)
        print(f"{name}: {len(regs)} kernel(s) compiled for sm_{args.arch}; registers {', '.join(regs) or '-'}; "
              f"bytes spilled {', '.join(spills) or '-'}")
    print(f"{len(compiled)} launches compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
