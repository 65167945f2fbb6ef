"""`gpt2 refresh`: the cron job. New links are scraped (only URLs not fetched before), deduplicated
incrementally into a new corpus version, and tokenized, each stage as its own `gpt2` process.

Safe to run every hour: a second refresh while one runs exits 75 before touching anything (a lock the
kernel releases even on kill -9); every artifact is published atomically, so a killed refresh leaves the
last good versions, and the next one reuses what was finished and completes the rest. The log goes to a
file that rotates by size.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Store, hold_lock
from gpt2cli.console import UTCFormatter
from gpt2cli.errors import EXIT_LOCKED, EXIT_TERMINATED, EXIT_USAGE, LockHeld, Terminated, UsageError
from gpt2cli.runconfig import Tables
from gpt2cli.train.runs import collect_runs
from gpt2cli.workers import die_with

log = logging.getLogger(__name__)

# (stage, arguments): what an hourly refresh runs, in order; the run config supplies the rest.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scrape-reddit", ()),
    ("dedupe", ("--incremental",)),
    ("tokenize", ()),
)


class _LogFile(RotatingFileHandler):
    """A log file that stops taking lines (a full disk) is said once, on stderr, and left: the refresh goes on
    logging there, instead of a traceback per line in the mail cron sends."""

    def handleError(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger("gpt2cli")
        logger.removeHandler(self)
        logger.warning("cannot write %s (%s): logging on stderr only", self.baseFilename, sys.exc_info()[1])


def log_to_file(path: Path, max_bytes: int, backups: int) -> None:
    """Also log to ``path``, rotated when it reaches ``max_bytes`` (``backups`` old files kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _LogFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(UTCFormatter())
    logging.getLogger("gpt2cli").addHandler(handler)


class _Stop:
    """A SIGTERM during a refresh: passed on to the running stage, and no later stage starts; with no stage
    running (waiting for the lock, say) the refresh stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.starting = False  # a stage is being started: ``watch`` passes the signal on
        self.child: subprocess.Popen[str] | None = None

    def __call__(self, *_: Any) -> None:
        self.requested = True
        if self.starting:
            return
        if self.child is None or self.child.poll() is not None:
            log.warning("stopped by SIGTERM with no stage running; the next refresh does the work")
            raise Terminated("stopped by SIGTERM; the next refresh does the work")
        self._pass_on()

    def watch(self, child: subprocess.Popen[str]) -> None:
        self.child, self.starting = child, False
        if self.requested:  # the signal came while the stage was starting
            self._pass_on()

    def _pass_on(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()


def refresh(
    store: Store,
    run_config: Tables | None,
    *,
    wait: bool = False,
    keep: int | None = None,
    checks: Mapping[str, Callable[[dict[str, Any]], object]] | None = None,
) -> tuple[int, list[dict[str, Any]], str | None]:
    """Run the stages with the run config's settings, then, with ``keep``, delete all but the newest ``keep``
    versions of each kind (gc); the exit status (0 done, 75 another run holds a lock: try at the next hour, 143
    stopped by SIGTERM, 2 no run config or a bad setting of a stage, else the failing stage's status), each
    finished stage's result, and the error (logged already) when it failed. ``checks``: each stage's checks of
    its parsed options, run on every stage's settings before the first stage starts."""
    if run_config is None:  # scrape-reddit has no link source but the run config's
        return _refused("refresh needs a run config (--run-config FILE or $GPT2_RUN_CONFIG) naming the link sources")
    try:
        for stage, args in STAGES:  # each stage's settings, before the first stage runs
            run_config.check(stage, args, (checks or {}).get(stage))
    except UsageError as e:
        return _refused(str(e))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with hold_lock(store.home / ".refresh.lock", "the refresh", wait=wait):
            log.info("refresh of %s started", store.home)
            for stage, args in STAGES:
                if stop.requested:
                    log.warning("stopped by SIGTERM before %s; the next refresh finishes the work", stage)
                    return EXIT_TERMINATED, results, None
                if stage == "tokenize" and store.latest("tokenizer") is None:
                    log.warning("tokenize: skipped, no tokenizer yet (run `gpt2 train-bpe` once)")
                    continue
                command = [sys.executable, "-m", "gpt2cli", "--home", str(store.home), "--json"]
                command += ["--run-config", run_config.path]
                status, result, error = _run(stage, [*command, stage, *args], stop)
                if result is not None:
                    results.append({"stage": stage, **result})
                if stop.requested:
                    log.warning("%s: stopped by SIGTERM; the next refresh finishes the work", stage)
                    return EXIT_TERMINATED, results, None
                if status == EXIT_LOCKED:
                    log.warning("%s: another run holds its lock; the next refresh finishes the work", stage)
                    return EXIT_LOCKED, results, None
                if status != 0:
                    log.error("%s failed (exit %d); the last good versions are untouched", stage, status)
                    return status, results, f"{stage} failed (exit {status})" + (f": {error}" if error else "")
            if keep is not None:
                _collect(store, keep)
            log.info("refresh done in %.1f s", time.monotonic() - started)
        return 0, results, None
    except KeyboardInterrupt:  # the log says how the refresh ended, as for a SIGTERM
        log.warning("interrupted (SIGINT); the next refresh finishes the work")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal past SIGRTMIN has no name of its own
        return f"signal {number}"


def _refused(error: str) -> tuple[int, list[dict[str, Any]], str]:
    log.error("%s", error)
    return EXIT_USAGE, [], error


def _collect(store: Store, keep: int) -> None:
    """gc after a refresh. A stage publishing elsewhere (a pretrain, say) only postpones it to the next
    refresh: the refresh itself succeeded."""
    try:
        collected = store.gc(keep)
    except LockHeld as e:
        log.warning("gc: skipped, %s; the next refresh collects", e)
        return
    freed = sum(a.size_bytes for a in collected.removed)
    log.info("gc: deleted %d versions (%d bytes), kept the newest %d of each kind%s", len(collected.removed), freed,
             keep, f"; {len(collected.in_use)} in use" if collected.in_use else "")  # fmt: skip
    runs = collect_runs(store, collected.removed)
    if runs.removed:
        log.info("gc: deleted %d training runs (%d bytes)", len(runs.removed), sum(r.bytes for r in runs.removed))
    for run in runs.reported:
        log.info("gc: %s", run.describe(f"{run.bytes} bytes"))


def _run(stage: str, command: list[str], stop: _Stop) -> tuple[int, dict[str, Any] | None, str | None]:
    """One stage as a child process: its log lines go to the log, its result (JSON) becomes one line, its last
    `gpt2: error:` line is returned. A SIGTERM to the refresh is passed on to the stage, and the stage dies with
    the refresh if that is killed."""
    stop.starting = True  # from here a SIGTERM waits for the stage's process, to pass it on
    log.info("%s: started", stage)
    error = None
    with tempfile.TemporaryFile("w+") as out:
        with subprocess.Popen(
            command, stdout=out, stderr=subprocess.PIPE, text=True, preexec_fn=functools.partial(die_with, os.getpid())
        ) as child:
            stop.watch(child)
            assert child.stderr is not None
            for line in child.stderr:
                if line.strip():
                    log.info("%s | %s", stage, line.rstrip())
                if line.startswith("gpt2: error: "):
                    error = line.removeprefix("gpt2: error: ").rstrip()
            status = child.wait()
        if status < 0:  # killed by a signal (the OOM killer, an operator): the status a shell gives, 128 + N
            error = error or f"killed by {_signal_name(-status)}"
            status = 128 - status
        out.seek(0)
        try:
            result = json.loads(out.read())
        except ValueError:
            return status, None, error
    verb = "reused" if result.get("reused") else "published"
    log.info("%s: %s %s %s", stage, verb, result.get("ref"), json.dumps(result.get("summary", {}), default=str))
    return status, result, error
