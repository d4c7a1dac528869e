"""Which device to run on, and how much memory a new allocation can take there."""

from __future__ import annotations

import resource

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """The device to run on: "auto" is CUDA where there is one, else the CPU; a CUDA device this
    machine or torch build does not have is an error that says so (not a driver traceback later)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: {e}") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} CUDA device(s) "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
    return device


def cpu_has_bf16_math() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX): where bf16 training pays."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def available_memory(device: torch.device | str) -> int:
    """Bytes a new allocation can take on `device`: on CUDA the device's free memory plus what torch's
    caching allocator holds unused; on the CPU the least of the system's available memory, this
    process's cgroup allowance and its address-space limit (`ulimit -v`), each where it is known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    limits = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append(meminfo["MemAvailable"] * 1024)
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            cap = f.read().strip()
            if cap != "max":
                limits.append(int(cap) - int(g.read()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _read_fields("/proc/self/status").get("VmSize", 0) * 1024)
    return max(0, min(limits)) if limits else 2**63 - 1


def _read_fields(path: str) -> dict[str, int]:
    """`Name: value kB` lines of a /proc file as {name: value}; empty where the file is not there."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                value = rest.split()
                if value and value[0].isdigit():
                    fields[name] = int(value[0])
    except OSError:
        pass
    return fields
