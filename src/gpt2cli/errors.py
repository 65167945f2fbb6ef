"""Errors that end a command with a one-line message and a documented exit code.

Exit codes: 0 ok, 1 failure, 2 usage error (a bad option or reference), 75 another run holds the lock
(EX_TEMPFAIL from sysexits.h: cron wrappers treat it as "try again later").
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_TERMINATED = 143  # 128 + SIGTERM, what schedulers expect of a terminated job
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)


class Gpt2Error(Exception):
    """A failure the user can act on; the CLI prints it as one line, never a traceback."""

    exit_code = EXIT_FAILURE


class UsageError(Gpt2Error):
    """What the user typed is wrong: an unknown reference, an invalid option value."""

    exit_code = EXIT_USAGE


class LockHeld(Gpt2Error):
    """Another process is publishing the same artifact kind."""

    exit_code = EXIT_LOCKED


class Terminated(Gpt2Error):
    """A run stopped by SIGTERM after saving its state; rerunning the command resumes it."""

    exit_code = EXIT_TERMINATED
