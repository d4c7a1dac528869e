"""torchrun glue: the process group, this process's device, and the few collectives tt needs.

Under `torchrun` (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) `process_group` joins the group: NCCL for CUDA tensors and gloo for CPU ones when
training or planning on GPUs, gloo alone on CPU. Everything else reads torch.distributed's own
state, so without a group (a plain `tt train`) every helper is the single-process identity:
rank 0 of 1, no communication.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from tt.device import resolve_device

Result = TypeVar("Result")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """The one process that writes checkpoints, logs and results and shows progress bars."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; the rank without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def launched() -> bool:
    """Started by torchrun (its environment variables are set)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def local_device(device: str | torch.device | None = "auto") -> torch.device:
    """`tt.device.resolve_device(device)`, with a CUDA device of no index ("auto", "cuda") taken to mean
    this process's GPU under torchrun: cuda:LOCAL_RANK, one GPU per process."""
    resolved = resolve_device(device or "auto")
    if resolved.type != "cuda" or resolved.index is not None or "LOCAL_RANK" not in os.environ:
        return resolved
    local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
    if local >= count:
        raise ValueError(f"torchrun started local rank {local}, but this machine has {count} CUDA device(s): "
                         "give --nproc-per-node at most the number of GPUs, or --device cpu")
    return torch.device("cuda", local)


@contextmanager
def process_group(device: str | torch.device | None = "auto") -> Iterator[None]:
    """Join torchrun's process group for the block and leave it after; nothing when not launched
    by torchrun or when the caller has already joined one (it stays the caller's)."""
    if not launched() or _active():
        yield
        return
    resolved = local_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=resolved)
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(n: int) -> range:
    """This rank's contiguous part of `n` items, in rank order; the first n % world ranks take one
    more (so rank 0 always holds item 0)."""
    size, extra = divmod(n, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return range(start, start + size + (r < extra))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (in place, and returned)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(obj: Result) -> list[Result]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def from_main(fn: Callable[[], Result]) -> Result:
    """`fn()` run on rank 0 alone (reading a run directory only it may see) and its result, or the
    exception it raised, sent to every rank: all return it, or all raise."""
    if world_size() == 1:
        return fn()
    payload: list = [None]
    if is_main():
        try:
            payload[0] = (True, fn())
        except Exception as e:  # every rank raises it below, not rank 0 alone while the others wait
            payload[0] = (False, e)
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when there are several ranks (gradients averaged over
    them in the backward pass), else `model` itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
