"""A stage killed with -9 leaves neither its lock nor its worker processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gpt2cli.artifacts import hold_lock
from gpt2cli.errors import LockHeld


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _start(script: str) -> tuple[subprocess.Popen[str], list[int]]:
    """Run ``script`` in a fresh interpreter until it prints the pids it forked on one line."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, [int(pid) for pid in proc.stdout.readline().split()]


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path: Path):
    lock = tmp_path / ".lock"
    proc, (child,) = _start(f"""
        import os, time
        from pathlib import Path
        from gpt2cli.artifacts import hold_lock
        with hold_lock(Path({str(lock)!r}), "the test's lock"):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            print(pid, flush=True)
            time.sleep(60)
    """)
    try:
        try:
            with hold_lock(lock, "the lock"):
                raise AssertionError("the parent's lock was not held")
        except LockHeld as e:
            assert f"pid {proc.pid}" in str(e)
        _kill(proc)
        assert _alive(child)
        with hold_lock(lock, "the lock"):  # flock would still be held by the child here
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_pool_workers_die_with_a_killed_parent():
    proc, workers = _start("""
        import os, time
        from gpt2cli.workers import worker_pool
        pool = worker_pool(2)
        pool.submit(os.getpid).result()  # the pool forks its workers at the first task
        print(open(f"/proc/self/task/{os.getpid()}/children").read(), flush=True)
        time.sleep(60)
    """)
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    _kill(proc)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers):
        assert time.time() < deadline, "a pool worker outlived its parent"
        time.sleep(0.05)
