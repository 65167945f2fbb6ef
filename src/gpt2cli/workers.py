"""Process pools for the stages that count or screen text on every core."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def usable_workers(asked: int) -> int:
    """``asked`` processes (0: one per core), at most one per core this process may run on: the work is
    CPU-bound, so more only queue for the same cores, each a forked copy of the stage's memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if asked > cores:
        log.warning("--workers %d is more than the %d cores here: using %d", asked, cores, cores)
    return min(asked, cores) if asked else cores


def die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies: a forked pool worker waits on a pipe whose write
    end it holds itself, so after ``kill -9`` of the stage it would otherwise wait forever."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` forked processes that die with this one."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=die_with, initargs=(os.getpid(),)
    )
