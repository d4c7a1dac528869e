"""The CPU threads of a tt command: this machine's cores shared among the tt processes running at once.

Two processes of two busy-waiting OpenMP threads on two cores slow each other ~3x, where one thread
each barely interfere (benchmarks/RESULTS.md, issue #28). A command runs inside `CoreShare`: the
process registers in a folder of the temporary directory (one file per process) and takes
cores // (tt processes registered), at least one thread; `refresh` looks again (the training loop
calls it between steps), so the first of two trainings gives a core up when the second starts and
takes it back when that one ends. OMP_NUM_THREADS, where set, fixes the threads: the process still
counts in the others' shares but keeps its own.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

REFRESH_SECONDS = 2.0  # `refresh` looks at the other processes at most this often


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), so that a recycled process id is not
    taken for a tt process; "" where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return not started or _start_time(pid) == started


class CoreShare:
    """Registers this process among the tt processes of the machine and sets torch's threads to its share
    of the cores while inside (`with CoreShare():`); torch's thread count is restored on leaving."""

    def __init__(self, folder: str | None = None, cores: int | None = None):
        self.folder = folder or os.path.join(tempfile.gettempdir(), f"tt-processes-{os.getuid()}")
        self.cores = cores or usable_cores()
        self.fixed = bool(os.environ.get("OMP_NUM_THREADS"))
        self.path = os.path.join(self.folder, str(os.getpid()))
        self.threads = torch.get_num_threads()
        self._checked = -float("inf")

    def __enter__(self) -> CoreShare:
        self._restore = torch.get_num_threads()
        os.makedirs(self.folder, exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            f.write(_start_time(os.getpid()))
        os.replace(self.path + ".tmp", self.path)
        self.refresh(force=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        torch.set_num_threads(self._restore)

    def processes(self) -> int:
        """The tt processes registered and alive (this one included); forgets those that ended."""
        alive = 0
        for name in os.listdir(self.folder):
            if not name.isdigit():
                continue
            try:
                with open(os.path.join(self.folder, name)) as f:
                    started = f.read().strip()
            except FileNotFoundError:  # it just ended
                continue
            if _alive(int(name), started):
                alive += 1
            else:  # killed without cleaning up
                try:
                    os.remove(os.path.join(self.folder, name))
                except FileNotFoundError:
                    pass
        return max(alive, 1)

    def share(self) -> int:
        """This process's threads: its share of the cores, at least one."""
        return max(1, self.cores // self.processes())

    def refresh(self, force: bool = False) -> None:
        """Set torch's threads to the current share (at most every REFRESH_SECONDS; on the calling thread,
        whose OpenMP settings torch's parallel loops read: the main thread)."""
        now = time.monotonic()
        if self.fixed or (not force and now - self._checked < REFRESH_SECONDS):
            return
        self._checked = now
        threads = self.share()
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
