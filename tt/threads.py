"""The CPU threads of a tt command: this machine's cores shared among the tt processes running at once.

Two processes of two busy-waiting OpenMP threads on two cores slow each other ~3x, where one thread
each barely interfere (benchmarks/RESULTS.md, issue #28). A command runs inside `CoreShare`: the
process registers in a folder of the temporary directory (one file per process) and takes
cores // (tt processes registered), at least one thread and at most torch's own default (physical
cores); `refresh` looks again (the training loop calls it between steps), so the first of two
trainings gives a core up when the second starts and takes it back when that one ends. Only training
looks again: evaluation keeps the share it started with. OMP_NUM_THREADS, where set, fixes the
threads: the process still counts in the others' shares but keeps its own. Registration is
best-effort: where the folder cannot be written, or is not this user's own, the process runs on
torch's default threads, unregistered.
"""

from __future__ import annotations

import os
import stat
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
        self.registered = False
        self._checked = -float("inf")

    def __enter__(self) -> CoreShare:
        self._restore = torch.get_num_threads()
        try:
            self._register()
        except OSError:  # no share to take: torch's default threads
            return self
        self.refresh(force=True)
        return self

    def _register(self) -> None:
        """This process's file in the folder, the folder made private to this user (refused if another's)."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(f"{self.folder} is not this user's own folder")
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_start_time(os.getpid()))
        os.replace(tmp, self.path)
        self.registered = True

    def __exit__(self, *exc) -> None:
        if self.registered:
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
        """This process's threads: its share of the cores, at least one, at most torch's default."""
        return max(1, min(self._restore, self.cores // self.processes()))

    def refresh(self, force: bool = False) -> None:
        """Set torch's threads to the current share (at most every REFRESH_SECONDS; on the calling thread,
        whose OpenMP settings torch's parallel loops read: the main thread)."""
        now = time.monotonic()
        if self.fixed or not self.registered or (not force and now - self._checked < REFRESH_SECONDS):
            return
        self._checked = now
        threads = self.share()
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
