"""Terminal output: rich progress bars and tables on a TTY, plain timestamped lines otherwise (cron, CI).

Logs and progress go to stderr; stdout carries only results (tables, or JSON with ``--json``), so
``gpt2 ... --json | jq`` works from a shell and from cron alike.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from gpt2cli.errors import Gpt2Error

PLAIN_INTERVAL_S = 30.0


OFF_TERMINAL_WIDTH = 1000  # columns off a terminal, unless $COLUMNS says otherwise


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed stdout is the command's to judge (`reader_may_stop` ends `gpt2 sample | head` with 0): rich's
        own handler exits 1 at once, from whichever write found the pipe closed."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _console(**options: Any) -> Console:
    """Off a terminal (a pipe, a log file) nothing is wrapped or cut at rich's default 80 columns: a line a script
    greps (an error, a verify problem, `published X (PATH)`) stays one line, and tables and lineage trees keep
    whole paths, hashes and times."""
    console = _Console(**options)
    if not console.is_terminal:
        console.soft_wrap = True
        if "COLUMNS" not in os.environ:
            console.width = OFF_TERMINAL_WIDTH
    return console


def stderr_console() -> Console:
    return _console(stderr=True)


def stdout_console() -> Console:
    return _console(highlight=False)


def interactive() -> bool:
    """A terminal, and the first process of a distributed job (torchrun sets RANK)."""
    return stderr_console().is_terminal and os.environ.get("RANK", "0") == "0"


class UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, not the stream that existed at setup."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Rich log lines on a terminal; ``2026-12-01T04:20:00Z INFO message`` lines for log files."""
    handler: logging.Handler
    if interactive():
        from rich.logging import RichHandler

        handler = RichHandler(console=stderr_console(), show_path=False, log_time_format="%H:%M:%S")
    else:
        handler = _StderrHandler()
        handler.setFormatter(UTCFormatter())
    root = logging.getLogger("gpt2cli")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class Progress:
    """Counts work done; draws a bar on a TTY, logs a line every ``PLAIN_INTERVAL_S`` seconds otherwise."""

    def __init__(self, description: str, total: float | None, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0.0
        self.started = self._last_log = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(self._task, advance=amount)
        elif time.monotonic() - self._last_log >= PLAIN_INTERVAL_S:
            self._log_line()

    def _log_line(self) -> None:
        self._last_log = time.monotonic()
        rate = self.done / max(self._last_log - self.started, 1e-9)
        of_total = f"/{self.total:,.0f}" if self.total else ""
        logging.getLogger("gpt2cli").info(
            "%s: %s%s %s (%.1f %s/s)", self.description, f"{self.done:,.0f}", of_total, self.unit, rate, self.unit
        )


@contextlib.contextmanager
def progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Progress]:
    state = Progress(description, total, unit)
    if not interactive():
        yield state
        state._log_line()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:,.1f} {unit}/s")

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with RichProgress(*columns, console=stderr_console()) as bar:
        state._bar, state._task = bar, bar.add_task(description, total=total)
        yield state


@contextlib.contextmanager
def reader_may_stop() -> Iterator[None]:
    """Output for a reader that may stop reading (``gpt2 sample | head``): a closed pipe on stdout ends the command
    quietly with exit 0, because stopping was the reader's choice (click would exit 1, a failure). What is still
    buffered for stdout goes to /dev/null, where the flush at exit cannot fail again."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


def json_utf8(obj: Any, **options: Any) -> bytes:
    """JSON as UTF-8. File names need not be UTF-8: Python holds their stray bytes as lone surrogates, which
    are written as \\u escapes, and read back as the same name."""
    return json.dumps(obj, ensure_ascii=False, **options).encode("utf-8", "backslashreplace")


def print_json(obj: Any) -> None:
    if sys.stdout is None:  # started with descriptor 1 closed (`>&-`): the result has nowhere to go
        raise Gpt2Error("standard output is closed: nowhere to write the --json result")
    sys.stdout.flush()
    sys.stdout.buffer.write(json_utf8(obj, indent=2, default=str) + b"\n")
    sys.stdout.buffer.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
