"""tt.threads: the cores shared among the tt processes running at once."""

import os
import subprocess
import sys

import pytest
import torch

from tt.threads import CoreShare, _start_time


@pytest.fixture
def own_threads(monkeypatch):
    """torch's thread count as it was before the test; OMP_NUM_THREADS unset (not fixed) inside it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def register(folder, pid: int, started: str) -> None:
    with open(os.path.join(folder, str(pid)), "w") as f:
        f.write(started)


def test_a_process_alone_takes_every_core_and_shares_them_with_the_next(tmp_path, own_threads):
    folder = str(tmp_path)
    torch.set_num_threads(4)  # torch's default here: the most a share takes
    with CoreShare(folder, cores=4) as share:
        assert torch.get_num_threads() == 4 and share.processes() == 1
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            register(folder, other.pid, _start_time(other.pid))
            share.refresh()  # within REFRESH_SECONDS of the last look: not yet
            assert torch.get_num_threads() == 4
            share.refresh(force=True)
            assert share.processes() == 2 and torch.get_num_threads() == 2
            register(folder, 99_999_999, "1")  # no such process: killed without cleaning up
            register(folder, os.getppid(), "not its start time")  # a process id used again by another process
            share.refresh(force=True)
            assert torch.get_num_threads() == 2
            assert sorted(os.listdir(folder)) == sorted([str(os.getpid()), str(other.pid)])  # both forgotten
        finally:
            other.kill()
            other.wait()
        share.refresh(force=True)  # the other one ended: its core comes back
        assert torch.get_num_threads() == 4
    assert os.listdir(folder) == []  # this process's registration is gone


def test_a_share_is_at_least_one_thread(tmp_path, own_threads):
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        for p in sleepers:
            register(str(tmp_path), p.pid, _start_time(p.pid))
        with CoreShare(str(tmp_path), cores=2):
            assert torch.get_num_threads() == 1
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_omp_num_threads_fixes_the_threads_but_still_counts(tmp_path, own_threads, monkeypatch):
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with CoreShare(str(tmp_path), cores=2) as fixed:
        fixed.refresh(force=True)
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        with CoreShare(str(tmp_path), cores=8) as shared:  # one more registration (the same process id here)
            assert shared.processes() == 1 and torch.get_num_threads() == 3  # at most torch's threads
        assert torch.get_num_threads() == 3  # restored on leaving


def test_a_share_takes_no_more_than_torchs_default_threads(tmp_path, own_threads):
    """Logical CPUs (hyperthreads) count as cores; torch's default (physical cores) caps the share."""
    torch.set_num_threads(2)
    with CoreShare(str(tmp_path), cores=16):
        assert torch.get_num_threads() == 2


def test_a_folder_that_is_not_this_users_own_is_not_registered_in(tmp_path, own_threads):
    """A symlink where the folder should be (or a folder that cannot be written): the process runs on
    torch's default threads, unregistered, and writes nothing there."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "link")
    torch.set_num_threads(2)
    with CoreShare(str(tmp_path / "link"), cores=8) as share:
        assert not share.registered and torch.get_num_threads() == 2
        share.refresh(force=True)
        assert torch.get_num_threads() == 2
    assert os.listdir(target) == []
    with CoreShare("/proc/no-such-folder", cores=8) as share:
        assert not share.registered


def test_the_cli_trains_inside_a_share_that_it_refreshes_between_steps(tmp_path, own_threads, monkeypatch):
    """`tt train` registers the process and hands the share's refresh to the training loop."""
    import tt.threads
    import tt.train
    from tt.cli import main

    seen = {}
    monkeypatch.setattr(tt.threads.tempfile, "gettempdir", lambda: str(tmp_path))

    def fake_train(cfg, out, between_steps=None, **kw):
        seen["registered"] = os.listdir(tmp_path / f"tt-processes-{os.getuid()}")
        seen["refresh"] = between_steps

    monkeypatch.setattr(tt.train, "train", fake_train)
    assert main(["train", "--dataset", "pendulum-medium", "--out", str(tmp_path / "run"), "--preset", "small"]) == 0
    assert seen["registered"] == [str(os.getpid())]
    assert getattr(seen["refresh"], "__self__", None).__class__ is CoreShare
    assert os.listdir(tmp_path / f"tt-processes-{os.getuid()}") == []
