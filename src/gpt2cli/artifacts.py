"""The versioned artifact store that every stage reads from and publishes to.

Layout: ``$GPT2_HOME/<kind>/<version>/`` holds the stage's files and a ``manifest.json``. Versions are
``v1, v2, ...`` per kind and are never reused. A stage builds in a hidden ``.partial-*`` directory and
publishes with one atomic ``rename`` while it holds the kind's lock, so a reader sees a version complete
or not at all. A build whose kind, parameters and inputs equal an existing version's reuses that version:
this is what makes Makefile targets and cron reruns cheap and idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from gpt2cli import __version__
from gpt2cli.console import json_utf8
from gpt2cli.errors import Gpt2Error, LockHeld, UsageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_HOME = Path("data/runs")

# Which stage publishes each kind: an error about a missing input names the command to run.
PRODUCERS = {
    "raw-docs": "scrape-reddit",
    "corpus": "dedupe",
    "tokenizer": "train-bpe",
    "tokens": "tokenize",
    "model": "pretrain",
    "eval": "eval zero-shot",
}

_KIND_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_REF_RE = re.compile(r"[a-z][a-z0-9-]*@v[1-9][0-9]*")  # as an input names an artifact
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MAX_BYTES = 2**63 - 1  # a file's size is an off_t: no file is larger
NOT_KINDS = frozenset({"logs"})  # folders of the home that hold no artifacts (`gpt2 refresh` logs there)
_PARTIAL = ".partial-"
_TRASH = ".trash-"
_LOCK = ".lock"
_COUNTER = ".last-version"
_CURRENT = ".current"  # the version the kind's stage last published or reused: what a bare `kind` means
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    """Parameters may hold sets (block lists), dates and paths: give them a stable JSON form."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (dt.date, Path)):
        return str(obj)
    raise TypeError(f"parameter of type {type(obj).__name__} cannot go into a manifest")


def _canonical_json(obj: Any) -> bytes:
    return json_utf8(_without_negative_zero(obj), sort_keys=True, separators=(",", ":"), default=_json_default)


def _without_negative_zero(obj: Any) -> Any:
    """``-0.0`` as ``0.0``: equal numbers, so ``--val-fraction -0`` must be the same build as ``0``."""
    if isinstance(obj, float):
        return obj + 0.0  # -0.0 + 0.0 is 0.0; any other float is unchanged
    if isinstance(obj, dict):
        return {k: _without_negative_zero(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_without_negative_zero(v) for v in obj]
    return obj


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_dir(path: Path) -> None:
    """A directory's entries (a rename, a new file) on disk, not only in the page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt; a kill leaves it, for `_without_atomic_leftovers`
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_ATOMIC_TMP_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # write_atomic's temporary files


def _without_atomic_leftovers(root: Path) -> None:
    """Remove the temporary files of `write_atomic` calls a kill interrupted under ``root`` (a resumed draft):
    they are no files of the version being built."""
    for p in root.rglob("*.tmp"):
        if _ATOMIC_TMP_RE.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise Gpt2Error(f"{directory} is not an artifact: it has no {MANIFEST}") from None
    except OSError as e:  # a directory in its place, no permission, a failing disk: this version's problem alone
        raise Gpt2Error(f"manifest {path} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Gpt2Error(f"manifest {path} does not parse: {e}") from None
    if not isinstance(manifest, dict) or not {"kind", "version", "files"} <= manifest.keys():
        raise Gpt2Error(f"manifest {path} lacks kind, version or files")
    if problem := _manifest_problem(manifest):
        raise Gpt2Error(f"manifest {path} is damaged: {problem}")
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a parsed manifest unusable (a field of the wrong shape or an insane value), or None: every reader
    may then trust the fields it uses."""
    if not _matches(_KIND_RE, manifest["kind"]):
        return f"kind {manifest['kind']!r}"
    if not _matches(_VERSION_RE, manifest["version"]):
        return f"version {manifest['version']!r}"
    lists = (
        ("files", _is_version_file, "a file of the version ({path, bytes, sha256})"),
        ("inputs", lambda e: _is_artifact_entry(e) or _is_file_entry(e), "an artifact or a file"),
        ("retains", _is_artifact_entry, "an artifact"),
    )
    for name, is_entry, what in lists:
        entries = manifest.get(name, [])
        if not isinstance(entries, list):
            return f"{name} is not a list"
        bad = next((i for i, entry in enumerate(entries) if not is_entry(entry)), None)
        if bad is not None:
            return f"{name}[{bad}] is not {what}"
    parent = manifest.get("parent")
    if parent is not None and not _is_artifact_entry(parent):
        return "parent is not an artifact"
    for name in ("params", "summary"):
        if not isinstance(manifest.get(name, {}), dict):
            return f"{name} is not an object"
    if not isinstance(manifest.get("created_at", ""), str):
        return "created_at is not a string"
    return None


def _matches(pattern: re.Pattern[str], value: Any) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_artifact_entry(entry: Any) -> bool:
    """``{ref, manifest_sha256}`` (and the ``home`` of one from another home), and no ``path``: readers tell a file
    input by that key."""
    return (
        isinstance(entry, dict)
        and "path" not in entry
        and _matches(_REF_RE, entry.get("ref"))
        and _matches(_SHA256_RE, entry.get("manifest_sha256"))
        and isinstance(entry.get("home", ""), str)
    )


def _is_file_entry(entry: Any) -> bool:
    """``{path, bytes, sha256}``, and no ``ref`` or ``manifest_sha256``: readers tell an artifact input by those."""
    return (
        isinstance(entry, dict)
        and not entry.keys() & {"ref", "manifest_sha256"}
        and isinstance(entry.get("path"), str)
        and entry["path"] != ""
        and "\0" not in entry["path"]
        and type(entry.get("bytes")) is int  # not a bool
        and 0 <= entry["bytes"] <= _MAX_BYTES
        and _matches(_SHA256_RE, entry.get("sha256"))
    )


def _is_version_file(entry: Any) -> bool:
    """A file entry whose path stays inside the version directory and is not its manifest."""
    return _is_file_entry(entry) and entry["path"] != MANIFEST and not {"", ".", ".."} & set(entry["path"].split("/"))


@dataclass(frozen=True)
class Artifact:
    """A published version: its directory and its manifest."""

    path: Path
    manifest: dict[str, Any] = field(repr=False, compare=False)
    foreign: bool = field(default=False, compare=False)  # opened by path from another home than the reader's

    @classmethod
    def open(cls, path: Path) -> Artifact:
        return cls(Path(path), load_manifest(Path(path)))

    @property
    def home(self) -> Path:
        """The home its references name versions in: ``<home>/<kind>/<vN>``."""
        return Path(os.path.abspath(self.path)).parent.parent

    @staticmethod
    def placed_ref(path: Path) -> str:
        """The reference a version directory's place names (``<home>/corpus/v2``: ``corpus@v2``), whatever its
        manifest says or when it cannot be read."""
        path = Path(os.path.abspath(path))
        return f"{path.parent.name}@{path.name}"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def ref(self) -> str:
        return f"{self.kind}@{self.version}"

    @property
    def number(self) -> int:
        return int(self.version[1:])

    @property
    def params(self) -> dict[str, Any]:
        return self.manifest.get("params", {})

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest.get("inputs", [])

    @property
    def parent(self) -> dict[str, Any] | None:
        return self.manifest.get("parent")

    @property
    def retains(self) -> list[dict[str, Any]]:
        """Versions this one needs kept beyond its inputs: what rebuilding it reads (see ``Store.produce``)."""
        return self.manifest.get("retains", [])

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary", {})

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"])

    @cached_property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def file(self, relpath: str) -> Path:
        """Path of one of the artifact's files; an error names the artifact when it has no such file."""
        if not any(f["path"] == relpath for f in self.manifest["files"]):
            raise Gpt2Error(f"{self.ref} has no file {relpath}")
        return self.path / relpath

    def verify(self, *, quick: bool = False) -> list[str]:
        """Problems found on disk, one line each; empty when every file matches its manifest entry.

        ``quick`` compares sizes only (used before reusing a version); the full check recomputes sha256.
        """
        problems = []
        listed = set()
        for entry in self.manifest["files"]:
            listed.add(entry["path"])
            if problem := self._file_problem(entry, quick=quick):
                problems.append(f"{entry['path']}: {problem}")
        if not quick:
            for relpath in _list_files(self.path):
                if relpath not in listed and relpath != MANIFEST:
                    problems.append(f"{relpath}: not in the manifest")
        return problems

    def _file_problem(self, entry: dict[str, Any], *, quick: bool) -> str | None:
        """How one file differs from its manifest entry, or None; one that cannot be read is that file's problem,
        not the end of the check."""
        path, size = self.path / entry["path"], entry["bytes"]
        try:
            actual = path.stat().st_size
            if actual < size:
                return f"truncated ({actual} of {size} bytes)"
            if actual > size:
                return f"changed ({actual} bytes, manifest says {size})"
            if not quick and sha256_file(path) != entry["sha256"]:
                return "changed (sha256 differs from the manifest)"
        except FileNotFoundError:
            return "missing"
        except OSError as e:  # a directory in its place, no permission, a failing disk
            return f"cannot be read ({e.strerror or e})"
        return None


def _list_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@dataclass
class Draft:
    """A version being built. ``dir`` becomes the artifact; ``work`` is scratch space dropped on publish.

    ``resumed`` is true when a killed run of the same build left this draft behind (resumable stages only).
    """

    kind: str
    dir: Path
    resumed: bool
    unread: list[dict[str, Any]] = field(default_factory=list)  # input files the build may still be reading

    def inputs_read(self, paths: Iterable[Path | str] | None = None) -> None:
        """The build is done reading these input files (all, by default): they are checked now, not when it ends
        (an eval reads its data first, then scores for hours while another run may rewrite a cached file)."""
        done = None if paths is None else {str(Path(p).resolve()) for p in paths}
        now = [e for e in self.unread if done is None or e.get("path") in done]
        check_inputs_unchanged(now, self.kind)
        self.unread = [e for e in self.unread if e not in now]

    @property
    def work(self) -> Path:
        path = self.dir / ".work"
        path.mkdir(exist_ok=True)
        return path


@dataclass(frozen=True)
class Published:
    artifact: Artifact
    reused: bool


def is_path_reference(ref: str | Path) -> bool:
    """Whether a reference names a directory (``./x``, ``/abs``, ``~/x``, ``a/b``) rather than ``KIND[@vN]``."""
    text = str(ref)
    return isinstance(ref, Path) or "/" in text or text.startswith((".", "~"))


def artifact_input(artifact: Artifact) -> dict[str, Any]:
    """A manifest input naming ``artifact``; one from another home records that home, where its ref means it."""
    entry = {"ref": artifact.ref, "manifest_sha256": artifact.manifest_sha256}
    return {**entry, "home": str(artifact.home)} if artifact.foreign else entry


def check_regular_file(path: Path, what: str = "input") -> None:
    """A stage reads an input file more than once (its checksum, its records, again on resume), so a pipe
    such as ``/dev/stdin`` or a device cannot be one."""
    if path.is_file():
        return
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    kind = "a directory" if path.is_dir() else "a pipe" if path.is_fifo() else "not a regular file"
    raise UsageError(f"{what} {path} is {kind}: inputs are checksummed, read, and read again on resume; "
                     "save it to a file first")  # fmt: skip


def distinct_files(files: Sequence[Path]) -> list[Path]:
    """``files`` without a file reached again (named twice, in a folder also given, through a link), with a
    warning: read twice, its records would count twice."""
    first: dict[tuple[int, int], Path] = {}
    for path in files:
        st = path.stat()
        if (key := (st.st_dev, st.st_ino)) in first:
            log.warning("%s is %s, given already: read once", path, first[key])
        else:
            first[key] = path
    return list(first.values())


def file_input(path: Path) -> dict[str, Any]:
    check_regular_file(Path(path))
    path = Path(path).resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


class BeingDeleted(Gpt2Error):
    """A version a gc has claimed: it is being deleted, or kept after all once that gc is done."""


class InputChanged(Gpt2Error):
    """An input file whose bytes no longer match the checksum the build's identity names: it was replaced or
    rewritten while the stage read it, so what the stage read is not what a manifest would say."""


def check_inputs_unchanged(inputs: Sequence[dict[str, Any]], kind: str) -> None:
    """Raise InputChanged for the first input file (an entry with ``path`` and ``sha256``) whose bytes differ now.
    A directory (``"directory": true``, an eval's model) has its own stage's identity."""
    for entry in inputs:
        path, sha256 = entry.get("path"), entry.get("sha256")
        if not path or not sha256 or entry.get("directory"):
            continue
        try:
            changed = sha256_file(Path(path)) != sha256
        except OSError as e:
            raise InputChanged(f"input {path} became unreadable while {kind} read it ({e.strerror or e}); "
                               "nothing was published") from None  # fmt: skip
        if changed:
            raise InputChanged(f"input {path} changed while {kind} read it; nothing was published (run it again)")


def input_identity(entry: dict[str, Any]) -> str | None:
    """What an input is: an artifact's manifest checksum, or a file's checksum and, when its name decides how
    its bytes are read (``read_as``: the same lines are one text document in ``.txt``, records in ``.jsonl``),
    that too."""
    if entry.get("manifest_sha256"):
        return entry["manifest_sha256"]
    sha256 = entry.get("sha256")
    return f"{sha256}:{entry['read_as']}" if sha256 and entry.get("read_as") else sha256


def fingerprint(kind: str, params: dict[str, Any], inputs: Sequence[dict[str, Any]]) -> str:
    """Identity of a build: equal fingerprints mean the same stage computed on the same things."""
    identity = [input_identity(i) for i in inputs]
    return hashlib.sha256(_canonical_json({"kind": kind, "params": params, "inputs": identity})).hexdigest()


_HELD_LOCKS: set[str] = set()  # the lock files this process holds


@contextlib.contextmanager
def hold_lock(path: Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """An exclusive fcntl lock on ``path``, released by the kernel when the holder dies, even on kill -9.

    A POSIX record lock, not ``flock``: it belongs to this process alone, so the workers a stage forks do not
    hold it on after the stage is killed. Without ``wait``, a held lock raises LockHeld (exit 75) naming the
    holder's pid.

    The file locked must still be the one at ``path`` (gc deletes a training run's directory, lock file included,
    while holding its lock): else the one there now is locked instead.

    Holding it again inside a hold (a stage that decides what to build under the lock it publishes under) is a
    no-op: the lock is the process's, and closing a second descriptor of the file would release it.
    """
    key = os.path.abspath(path)
    if key in _HELD_LOCKS:
        yield
        return
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was deleted just now
            continue
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0] or "unknown"
                if not wait:
                    raise LockHeld(f"another run holds {what} (pid {holder}); retry later or pass --wait") from None
                log.info("waiting for %s held by pid %s", what, holder)
                fcntl.lockf(fd, fcntl.LOCK_EX)
            if is_open_at(fd, path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n{_utc_now()}\n".encode(), 0)
                _HELD_LOCKS.add(key)
                try:
                    yield
                finally:
                    _HELD_LOCKS.discard(key)
                return
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        log.info("%s was deleted while this run waited for it: locking the one there now", path)


def is_open_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the one at ``path`` (by ``stat``: opening the path again and closing it
    would drop a lock, which fcntl ties to the process, not the descriptor)."""
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (at.st_dev, at.st_ino)


def _same_dir(a: Path, b: Path) -> bool:
    """Whether two paths name one directory (symlinks, relative paths); False when either is not there."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


_reading: dict[Path, int] = {}  # version directory -> descriptor holding its shared flock


def hold_for_reading(path: Path) -> None:
    """Mark a version as read by this process until ``release_reads``, so ``gc`` does not delete it under a
    running stage. A shared flock on the version's directory: readers share it, gc asks for it exclusively."""
    path = Path(os.path.abspath(path))
    if path in _reading:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not there: loading its manifest reports that
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BeingDeleted(f"{path} is being deleted by `gpt2 artifacts gc`") from None
    except OSError:
        os.close(fd)
        raise
    _reading[path] = fd


def release_reads() -> None:
    """Let go of every version this process read (the end of a command)."""
    while _reading:
        os.close(_reading.popitem()[1])


@contextlib.contextmanager
def reading(path: Path) -> Iterator[bool]:
    """Hold one version for reading while the block runs, then let go of it (a command that reads every version
    in turn holds one descriptor at a time, not one per version). A gc that has claimed it is waited for:
    the block gets False when that gc deleted it, True when the version is there to read."""
    key = Path(os.path.abspath(path))
    held_before = key in _reading
    for waited in itertools.count():
        try:
            hold_for_reading(path)
            break
        except BeingDeleted:  # a gc holds its claim: it deletes the version, or keeps it after all
            if waited == 20:
                log.info("waiting for the gc that claimed %s", path)
            time.sleep(0.05)
    try:
        yield Path(path).is_dir()
    finally:
        if not held_before and (fd := _reading.pop(key, None)) is not None:
            os.close(fd)


def _claim_for_deletion(path: Path) -> bool:
    """The exclusive flock ``hold_for_reading`` excludes, taken on the descriptor this process may already hold
    (flock converts it); False when another process is reading the version."""
    path = Path(os.path.abspath(path))
    fd = _reading.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        _reading[path] = fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _release_claim(path: Path) -> None:
    """A claimed version that stays after all goes back to being read by this process, which readers share."""
    fcntl.flock(_reading[Path(os.path.abspath(path))], fcntl.LOCK_SH)


def _remove_leftover(path: Path) -> None:
    """Delete a directory a killed run left (a draft, a version gc renamed away); no error if it goes meanwhile."""
    log.info("removing %s left by an interrupted run", path.name)
    shutil.rmtree(path, ignore_errors=True)


def _sweep_trash(kind_dir: Path, *, dry_run: bool) -> int:
    """Remove (unless ``dry_run``) what gc runs killed while deleting left in ``kind_dir``: versions renamed away,
    partly deleted, that no publish of the kind may come to sweep. Their bytes. Only called with the kind's lock
    held (or on a dry run, which removes nothing), so no deletion is live."""
    trash = [p for p in kind_dir.iterdir() if p.name.startswith(_TRASH)]
    freed = sum(_tree_bytes(p) for p in trash)
    if not dry_run:
        for p in trash:
            _remove_leftover(p)
    return freed


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root``; a file deleted meanwhile (by the gc a dry run looks beside) counts none."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


@dataclass(frozen=True)
class Collected:
    """What ``gc`` deleted (or would delete), what it spared because a running stage reads it, the versions it
    left alone because their manifest cannot be read (by ref, with why), and the bytes of what killed gc runs left
    that it removed (or would remove)."""

    removed: list[Artifact]
    in_use: list[Artifact]
    damaged: dict[str, str]
    leftover_bytes: int


_Trees = dict[str, tuple[str, dict[str, Any]]]  # lineage trees made, by ref, with their manifest's sha256


class Store:
    """All artifacts under one home directory."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home or os.environ.get("GPT2_HOME") or DEFAULT_HOME)
        if self.home.exists() and not self.home.is_dir():
            raise UsageError(f"the artifact home {self.home} is not a directory")

    # -- reading -------------------------------------------------------------------------------

    def kinds(self) -> list[str]:
        if not self.home.is_dir():
            return []
        return sorted(
            p.name for p in self.home.iterdir() if p.is_dir() and _KIND_RE.match(p.name) and p.name not in NOT_KINDS
        )

    def version_dirs(self, kind: str) -> list[Path]:
        """Directories named like published versions, oldest first."""
        kind_dir = self.home / kind
        if not kind_dir.is_dir():
            return []
        numbered = [(int(m.group(1)), p) for p in kind_dir.iterdir() if (m := _VERSION_RE.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(numbered)]

    def versions(self, kind: str) -> list[Artifact]:
        """Published versions of a kind, oldest first; one with a damaged manifest is skipped with a warning."""
        versions, damaged = self._scan(kind)
        for ref, problem in damaged.items():
            log.warning("skipping %s: %s", ref, problem)
        return versions

    def _scan(self, kind: str) -> tuple[list[Artifact], dict[str, str]]:
        """The versions of a kind whose manifest reads, oldest first, and the refs of the others, with why: one
        damaged version must not hide the others."""
        versions, damaged = [], {}
        for p in self.version_dirs(kind):
            try:
                versions.append(self.open(p))
            except Gpt2Error as e:
                damaged[Artifact.placed_ref(p)] = str(e)
        return versions, damaged

    def all(self) -> list[Artifact]:
        return [a for kind in self.kinds() for a in self.versions(kind)]

    def latest(self, kind: str) -> Artifact | None:
        versions = self.versions(kind)
        return versions[-1] if versions else None

    def current(self, kind: str) -> Artifact | None:
        """The version a bare ``kind`` reference means (see ``mark_current``); None when there is none or its
        manifest is damaged."""
        dirs = self.version_dirs(kind)
        try:
            return self.open(self._current_dir(kind, dirs)) if dirs else None
        except Gpt2Error:
            return None

    def mark_current(self, artifact: Artifact) -> None:
        """Make ``artifact`` what a bare reference to its kind means. Every stage does this for the version it
        publishes or reuses, so the next stage reads what this one produced: after a run config is reverted,
        the older version it reuses, not the newest."""
        self._point_current(artifact.kind, [artifact.version])

    def _point_current(self, kind: str, names: list[str]) -> None:
        """Write the current pointer: the first of ``names`` that is a version. A publish names the new version
        and the current one before its rename, so a kill on either side of it leaves the right one current."""
        pointer = self.home / kind / _CURRENT
        for attempt in range(2):
            try:
                write_atomic(pointer, "".join(f"{name}\n" for name in names).encode())
                return
            except FileNotFoundError:  # a run publishing this kind swept our temporary file: once more
                if attempt:
                    raise

    def _current_dir(self, kind: str, dirs: list[Path]) -> Path:
        """The directory of the current version among ``dirs`` (not empty): the marked one, else the newest."""
        pointer = self.home / kind / _CURRENT
        try:
            names = pointer.read_text().split()
        except FileNotFoundError:
            return dirs[-1]
        except (OSError, UnicodeDecodeError) as e:
            log.warning("ignoring %s (%s): %s means the newest version", pointer, e, kind)
            return dirs[-1]
        by_name = {p.name: p for p in dirs}
        chosen = next((by_name[name] for name in names if name in by_name), None)
        if chosen is None:
            log.warning("%s names %r, not a version there: %s means the newest, %s", pointer,
                        " ".join(names)[:40], kind, dirs[-1].name)  # fmt: skip
            return dirs[-1]
        return chosen

    def resolve(self, ref: str | Path, kind: str | None = None, *, option: str = "this") -> Artifact:
        """``kind`` (the current version: see ``mark_current``), ``kind@v3``, ``kind@latest`` (the newest), or a
        path to an artifact directory. With ``kind``, another stage's artifact is a usage error that names what
        ``option`` needs."""
        artifact = self.open(self.locate(ref))
        if kind is not None and artifact.kind != kind:
            raise UsageError(f"{artifact.ref} is a {artifact.kind!r} artifact; {option} needs a {kind!r} artifact")
        return artifact

    def locate(self, ref: str | Path) -> Path:
        """The directory a reference names, held for reading, its manifest not yet read (``verify`` reports a
        damaged one as that version's problem)."""
        text = str(ref)
        if is_path_reference(ref):
            path = Path(text).expanduser()
            if not path.is_dir():
                raise UsageError(f"no artifact directory at {path}")
            hold_for_reading(path)
            return path
        kind, at, version = text.partition("@")
        if not _KIND_RE.match(kind) or (at and version != "latest" and not _VERSION_RE.match(version)):
            raise UsageError(f"bad reference {text!r}: use KIND, KIND@vN, KIND@latest or a directory path")
        dirs = self.version_dirs(kind)
        if not dirs:
            producer = PRODUCERS.get(kind)
            hint = f"; run `gpt2 {producer}` to make one" if producer else ""
            known = ", ".join(self.kinds()) or "none"
            asked = f"no {text}: " if at else ""  # the reference as given, so the message names it
            raise UsageError(f"{asked}no {kind!r} artifact in {self.home} (kinds there: {known}){hint}")
        # the newest (or current) is that directory even when its manifest is damaged: that is an error, not a
        # reason to read another version instead
        if version == "":
            chosen: Path | None = self._current_dir(kind, dirs)
        else:
            chosen = dirs[-1] if version == "latest" else next((p for p in dirs if p.name == version), None)
        if chosen is None:
            existing = ", ".join(p.name for p in dirs)
            raise UsageError(f"no {kind}@{version} in {self.home}; {kind} versions: {existing}")
        hold_for_reading(chosen)
        return chosen

    def open(self, path: Path) -> Artifact:
        """The artifact in ``path``. One at this home's ``<kind>/<vN>`` must say it is that version: a manifest
        copied or edited to name another would be listed, kept, deleted and handed on as that one. A copy elsewhere
        may be named anything."""
        artifact = Artifact.open(path)
        placed = Artifact.placed_ref(path)
        here = _same_dir(artifact.home, self.home)
        if artifact.ref != placed and here:
            raise Gpt2Error(f"manifest {Path(path) / MANIFEST} is damaged: it names {artifact.ref}, not {placed}")
        return artifact if here else replace(artifact, foreign=True)

    def recorded(self, by: Artifact | None, entry: dict[str, Any], kind: str | None = None) -> Artifact:
        """The artifact input ``entry`` of ``by`` names: its ref means a version in the home the entry records, else
        in ``by``'s own (a tokens artifact read by path from another home names that home's tokenizer); with no
        ``by``, an entry this home wrote."""
        home = Path(entry.get("home") or (by.home if by is not None else self.home))
        if _same_dir(home, self.home):
            return self.resolve(entry["ref"], kind)
        return replace(Store(home).resolve(entry["ref"], kind), foreign=True)  # its ref means a version there

    def dependents_closure(self, roots: Sequence[Artifact]) -> set[str]:
        """Refs of ``roots`` and of every artifact they were built from or retain, transitively. Not the versions
        they continue (``parent``): a version stands alone without them."""
        seen: set[str] = set()
        stack = [a.ref for a in roots]
        while stack:
            ref = stack.pop()
            if ref in seen:
                continue
            seen.add(ref)
            with contextlib.suppress(Gpt2Error):
                artifact = self.resolve(ref)
                entries = [*artifact.inputs, *artifact.retains]
                stack.extend(i["ref"] for i in entries if "ref" in i and not i.get("home"))  # another home's: not ours
        return seen

    def lineage(self, artifact: Artifact) -> dict[str, Any]:
        """The tree of inputs back to the raw files; each node says whether its input is still intact. Each version
        is read once, however many others were built from it, and one among its own inputs (a hand-edited
        manifest) is marked as a cycle rather than followed."""
        return self._lineage(artifact, {}, set())

    def _lineage(self, artifact: Artifact, made: _Trees, making: set[str]) -> dict[str, Any]:
        """``made``: the trees made so far; ``making``: the refs whose trees are being made, this one's among them: one
        of them met again below is a cycle."""
        making.add(self._tree_key(artifact.home, artifact.ref))
        node: dict[str, Any] = {"ref": artifact.ref, "path": str(artifact.path), "inputs": []}
        if artifact.parent:
            node["parent"] = artifact.parent["ref"]
            try:
                self.recorded(artifact, artifact.parent)
            except Gpt2Error:
                node["parent_status"] = "removed"  # by gc: the version stands alone
        read = {i.get("ref") for i in artifact.inputs}
        retained = [{**r, "retained": True} for r in artifact.retains if r["ref"] not in read]
        for entry in [*artifact.inputs, *retained]:  # retained: an incremental corpus's earlier raw-docs
            if "path" in entry:
                node["inputs"].append({"file": entry["path"], "sha256": entry["sha256"], "bytes": entry["bytes"]})
            else:
                node["inputs"].append(self._input_node(artifact, entry, made, making))
        making.discard(self._tree_key(artifact.home, artifact.ref))
        return node

    def _tree_key(self, home: Path, ref: str) -> str:
        """A version's name in one lineage: its ref in this home, its home and ref in another."""
        return ref if _same_dir(home, self.home) else f"{home}:{ref}"

    def _input_node(self, by: Artifact, entry: dict[str, Any], made: _Trees, making: set[str]) -> dict[str, Any]:
        ref = entry["ref"]
        key = self._tree_key(Path(entry.get("home") or by.home), ref)
        if key in making:
            return {"ref": ref, "status": "cycle", "inputs": []}
        if key not in made:
            try:
                artifact = self.recorded(by, entry)
            except UsageError:
                return {"ref": ref, "status": "missing", "inputs": []}
            except Gpt2Error:
                return {"ref": ref, "status": "damaged", "inputs": []}
            made[key] = (artifact.manifest_sha256, self._lineage(artifact, made, making))
        manifest_sha256, tree = made[key]
        node = {**tree}  # a copy: what follows is about this use of it
        if manifest_sha256 != entry["manifest_sha256"]:
            node["status"] = "changed since use"
        if entry.get("retained"):
            node["retained"] = True
        return node

    # -- writing -------------------------------------------------------------------------------

    def lock(self, kind: str, *, wait: bool = False) -> contextlib.AbstractContextManager[None]:
        """Exclusive per-kind lock: one process at a time publishes a kind."""
        if not _KIND_RE.match(kind):
            raise UsageError(f"bad artifact kind {kind!r}")
        return hold_lock(self.home / kind / _LOCK, f"the lock on {kind!r}", wait=wait)

    def reusable(self, kind: str, params: dict[str, Any], inputs: Sequence[dict[str, Any]]) -> Artifact | None:
        """The newest intact version built from the same parameters and inputs, if any."""
        key = fingerprint(kind, json.loads(_canonical_json(params)), inputs)
        for existing in reversed(self.versions(kind)):
            if existing.manifest.get("fingerprint") != key:
                continue
            if problems := existing.verify(quick=True):
                log.warning("not reusing %s: %s", existing.ref, "; ".join(problems))
                continue
            try:  # held, so a gc running now cannot delete it once this run hands it on (outside the kind's lock)
                hold_for_reading(existing.path)
            except Gpt2Error:
                continue
            if existing.path.is_dir():
                return existing
        return None

    def produce(
        self,
        kind: str,
        *,
        params: dict[str, Any],
        inputs: Sequence[dict[str, Any]],
        build: Callable[[Draft], dict[str, Any] | None],
        force: bool = False,
        wait: bool = False,
        resumable: bool = False,
        command: Sequence[str] | None = None,
        parent: Artifact | None = None,
        retains: Sequence[dict[str, Any]] = (),
        stale: Callable[[Artifact], str | None] | None = None,
    ) -> Published:
        """Build and publish a version of ``kind``, or reuse the version already built from the same things.

        ``build`` writes the artifact's files into ``draft.dir`` and returns the summary (metrics, counts).
        With ``resumable``, a draft left by a killed run of the same build is handed back (``draft.resumed``)
        instead of being discarded. ``parent`` names the version this one continues (an incremental refresh);
        it is recorded and shown in the lineage but is not part of the build's identity, so rerunning the
        same refresh reuses its version. ``retains`` names versions, beyond the inputs, that rebuilding this one
        reads (an incremental corpus: the raw-docs of earlier runs): gc keeps them while it keeps this one.
        ``stale`` says why a version built from the same things must be built again all the same (work it left
        for later is due), or None.
        """
        params_json = json.loads(_canonical_json(params))  # what the manifest will hold, JSON-normalized
        key = fingerprint(kind, params_json, inputs)
        with self.lock(kind, wait=wait):
            kind_dir = self.home / kind
            partial = kind_dir / f"{_PARTIAL}{key[:20]}"
            self._remove_leftovers(kind_dir, keep=partial if resumable else None)
            existing = None if force else self.reusable(kind, params_json, inputs)
            if existing and stale and (why := stale(existing)):
                log.info("not reusing %s: %s", existing.ref, why)
                existing = None
            if existing:
                log.info("reusing %s: same inputs and parameters (--force recomputes)", existing.ref)
                self.mark_current(existing)
                return Published(existing, reused=True)
            resumed = partial.is_dir()
            if resumed:
                log.info("resuming the build left by an interrupted run in %s", partial)
            partial.mkdir(exist_ok=True)
            started = time.time()
            try:
                draft = Draft(kind, partial, resumed, unread=list(inputs))
                summary = build(draft)
                check_inputs_unchanged(draft.unread, kind)  # what was read is what the identity names
            except BaseException as e:
                # nothing to resume, or nothing worth resuming (read from other bytes): no draft left behind
                if not resumable or isinstance(e, InputChanged):
                    shutil.rmtree(partial, ignore_errors=True)
                raise
            summary = summary if isinstance(summary, dict) else {}
            shutil.rmtree(partial / ".work", ignore_errors=True)
            _without_atomic_leftovers(partial)
            version = f"v{self._next_number(kind_dir)}"
            manifest = {
                "format": MANIFEST_FORMAT,
                "kind": kind,
                "version": version,
                "created_at": _utc_now(),
                "gpt2cli_version": __version__,
                "command": shlex.join(["gpt2", *sys.argv[1:]] if command is None else command),
                "params": params_json,
                "inputs": list(inputs),
                "parent": artifact_input(parent) if parent is not None else None,
                "retains": list(retains),
                "fingerprint": key,
                "build_seconds": round(time.time() - started, 3),
                "files": [
                    {"path": rel, "bytes": (partial / rel).stat().st_size, "sha256": sha256_file(partial / rel)}
                    for rel in _list_files(partial)
                    if rel != MANIFEST
                ],
                "summary": summary,
            }
            for rel in _list_files(partial):
                with open(partial / rel, "rb+") as f:
                    os.fsync(f.fileno())
            write_atomic(partial / MANIFEST, json_utf8(manifest, indent=2) + b"\n")
            final = kind_dir / version
            dirs = self.version_dirs(kind)
            self._point_current(kind, [version, *([self._current_dir(kind, dirs).name] if dirs else [])])
            os.rename(partial, final)  # the publish: atomic on one filesystem
            fsync_dir(kind_dir)
            write_atomic(kind_dir / _COUNTER, f"{version[1:]}\n".encode())
            log.info("published %s in %s", f"{kind}@{version}", final)
            published = Artifact.open(final)
            self.mark_current(published)
            return Published(published, reused=False)

    def _next_number(self, kind_dir: Path) -> int:
        """One past the highest version ever published, so a deleted version's name never comes back."""
        counter = kind_dir / _COUNTER
        text = counter.read_text().strip() if counter.exists() else ""
        last = int(text) if text.isdigit() else 0
        if text and not text.isdigit():
            log.warning("ignoring the damaged %s (%r): numbering from the versions present", counter, text[:40])
        for p in kind_dir.iterdir():
            if m := _VERSION_RE.match(p.name):
                last = max(last, int(m.group(1)))
        return last + 1

    def _remove_leftovers(self, kind_dir: Path, keep: Path | None) -> None:
        """Drafts and trash of crashed runs; only called with the kind's lock held, so none is live."""
        for p in kind_dir.iterdir():
            if p.name.startswith((_PARTIAL, _TRASH)) and p != keep:
                _remove_leftover(p)
            elif _ATOMIC_TMP_RE.fullmatch(p.name):
                p.unlink(missing_ok=True)

    def remove(self, artifact: Artifact) -> bool:
        """Delete a version unless a running process reads it. Call with the kind's lock held."""
        if not _claim_for_deletion(artifact.path):
            return False
        self._delete(artifact)
        return True

    def _delete(self, artifact: Artifact) -> None:
        """Delete a version claimed for deletion: it disappears atomically (rename) before its files are removed."""
        trash = artifact.path.with_name(f"{_TRASH}{artifact.version}-{uuid.uuid4().hex[:8]}")
        os.rename(artifact.path, trash)
        os.close(_reading.pop(Path(os.path.abspath(artifact.path))))
        shutil.rmtree(trash)

    def gc(self, keep: int, *, dry_run: bool = False, wait: bool = False) -> Collected:
        """Delete all but the newest ``keep`` versions and the current one of each kind. A version a running stage
        reads stays too. What stays keeps what it was built from or retains, transitively, but not the versions it
        continues: it stands alone without them, and hourly refreshes would otherwise keep every version ever made.
        Every kind's lock is taken first: while any stage publishes, gc deletes nothing (exit 75, or waits). What a
        gc killed while deleting left goes too."""
        if keep < 1:
            raise UsageError("--keep must be at least 1")
        kinds = self.kinds()  # those whose locks are held
        with contextlib.ExitStack() as locks:
            if not dry_run:
                for kind in kinds:
                    locks.enter_context(self.lock(kind, wait=wait))
            leftovers = sum(_sweep_trash(self.home / kind, dry_run=dry_run) for kind in kinds)
            # a version whose manifest cannot be read is left alone, with a warning: its files may be whole (a
            # permission, a remount, a manifest to restore) and nothing says it is not needed; what it was built
            # from cannot be read either, so that is not spared for it
            scans = {kind: self._scan(kind) for kind in kinds}
            by_kind = {kind: versions for kind, (versions, _) in scans.items()}
            damaged = {ref: problem for _, skipped in scans.values() for ref, problem in skipped.items()}
            for ref, problem in damaged.items():
                log.warning("gc: leaving %s alone: %s", ref, problem)
            roots = [a for versions in by_kind.values() for a in versions[-keep:]]
            roots += [a for kind in by_kind if (a := self.current(kind)) is not None]
            kept = self.dependents_closure(roots)
            doomed = [a for versions in by_kind.values() for a in versions if a.ref not in kept]
            if dry_run:
                return Collected(doomed, [], damaged, leftovers)
            # every doomed version is claimed before any is deleted: one a running stage reads stays, and so does
            # what it was built from or retains, as for a kept version (a claimed one no reader can start on)
            in_use = [a for a in doomed if not _claim_for_deletion(a.path)]
            if in_use:
                kept = self.dependents_closure([*roots, *in_use])
                for artifact in doomed:
                    if artifact.ref in kept and artifact not in in_use:
                        _release_claim(artifact.path)
            removed = [a for a in doomed if a.ref not in kept]
            for artifact in removed:
                self._delete(artifact)
            return Collected(removed, in_use, damaged, leftovers)
