"""Training runs' directories, ``$GPT2_HOME/model/.runs/<id>/``, and their collection after ``gc``.

A run directory holds a run's checkpoints, its metrics.jsonl and TensorBoard events; ``gpt2 pretrain`` holds
its ``.lock`` while it trains and publishes. The store knows nothing of them: ``collect_runs`` runs after
``Store.gc`` and deletes a run directory when no remaining model version was trained in it, no pretrain holds
its lock, and it is finished (a model was published from it, at or after its newest checkpoint). A run that
never published, or that went on past what it published, is resumable work: it stays, and is reported.

This module imports no torch: ``gpt2 artifacts gc`` stays light.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Artifact, Store, is_open_at

log = logging.getLogger(__name__)

RUNS = ".runs"
LOCK = ".lock"
PUBLISHED = "published.jsonl"  # one line per model version published from the run: its ref and step
STEP_DIR = re.compile(r"^step-(\d{8})$")  # a checkpoint: step-00000100/state.pt
STATE = "state.pt"
_RUN_ID = re.compile(r"^[0-9a-f]{16}$")
_TRASH = ".trash-"


def runs_home(store: Store) -> Path:
    return store.home / "model" / RUNS


def run_directory(store: Store, run_id: str) -> Path:
    return runs_home(store) / run_id


def record_published(run_dir: Path, artifact: Artifact) -> None:
    """Note in the run directory that ``artifact`` was published from it (call with the run's lock held): the run
    is finished up to that step even after gc deletes the version."""
    entry = {
        "ref": artifact.ref,
        "steps": artifact.summary.get("steps"),
        "created_at": artifact.manifest.get("created_at"),
    }
    with open(run_dir / PUBLISHED, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the run's complete checkpoints, ascending; unlike ``checkpoint.checkpoints`` it removes nothing."""
    try:
        entries = list(run_dir.iterdir())
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for p in entries if (m := STEP_DIR.match(p.name)) and (p / STATE).is_file())


def run_id_of(model: Artifact) -> str | None:
    """The run a model version was trained in, from the run directory its summary records."""
    run_dir = model.summary.get("run_dir")
    return Path(run_dir).name if isinstance(run_dir, str) and run_dir else None


@dataclass(frozen=True)
class RunDir:
    """A run directory gc deleted (or would delete) or kept. ``reason`` says why it was kept: ``model`` (a
    remaining model version was trained in it), ``training`` (a pretrain holds its lock), ``unfinished``, or
    ``damaged`` (a model version's manifest does not read, so what it was trained in is unknown)."""

    id: str
    path: Path
    bytes: int
    checkpoint_step: int | None = None  # the newest checkpoint's step
    models: list[str] = field(default_factory=list)  # model versions published from it, still there or not
    reason: str | None = None

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "path": str(self.path), "bytes": self.bytes}
        if self.reason is not None:
            row["reason"] = self.reason
        return row | {"checkpoint_step": self.checkpoint_step, "models": self.models}

    def describe(self, size: str) -> str:
        """Why a kept run stays, for gc's output (``size``: the size as the caller prints sizes)."""
        head = f"kept training run {self.id} ({size})"
        if self.reason == "model":
            return f"{head}: {', '.join(self.models)} remains"
        if self.reason == "training":
            return f"{head}: a pretrain is training in it"
        if self.reason == "damaged":
            return f"{head}: a model version whose manifest is damaged may come from it (`gpt2 artifacts verify model`)"
        if self.checkpoint_step is None:
            return f"{head}: unfinished, with no checkpoint to resume from; delete {self.path} if it is not needed"
        return f"{head}: unfinished (step {self.checkpoint_step}), `gpt2 pretrain --resume` continues it"


@dataclass(frozen=True)
class CollectedRuns:
    removed: list[RunDir]
    kept: list[RunDir]

    @property
    def reported(self) -> list[RunDir]:
        """The kept runs worth telling the user about: resumable work, and runs being trained right now."""
        return [r for r in self.kept if r.reason != "model"]


def collect_runs(store: Store, gone: Sequence[Artifact] = (), *, dry_run: bool = False) -> CollectedRuns:
    """Delete (with ``dry_run``, only list) the run directories no longer needed, after ``Store.gc``.

    ``gone``: the versions that gc deleted, or would delete on a dry run; the model versions that remain are the
    others. Each run is decided while this process holds its lock, taken without waiting (a held lock: the run is
    kept), and deleted while it is held, so a pretrain starting at the same moment either finds the run whole or
    starts a new one. A dry run takes each lock only for the moment of the look, and creates nothing.
    """
    home = runs_home(store)
    if not home.is_dir():
        return CollectedRuns([], [])
    if not dry_run:
        for p in home.iterdir():
            if p.name.startswith(_TRASH):  # left by a gc killed while it deleted
                shutil.rmtree(p, ignore_errors=True)
    gone_models = [a for a in gone if a.kind == "model"]
    gone_refs = {a.ref for a in gone_models}
    listed, models = store.version_dirs("model"), store.versions("model")
    removed, kept = [], []
    for run_dir in sorted(p for p in home.iterdir() if _RUN_ID.match(p.name) and p.is_dir()):
        fd = _lock(run_dir, create=not dry_run)
        if fd == _HELD:
            kept.append(_describe(run_dir, [], reason="training"))
            continue
        if fd == _GONE:
            continue
        try:
            if store.version_dirs("model") != listed:  # a pretrain published before this lock was taken: read again
                listed, models = store.version_dirs("model"), store.versions("model")
            remaining = [a for a in models if a.ref not in gone_refs]
            decided = _decide(run_dir, remaining, gone_models)
            if decided.reason is None and len(models) < len(listed):  # a model whose run cannot be read
                decided = replace(decided, reason="damaged")
            if decided.reason is not None:
                kept.append(decided)
                continue
            if not dry_run:
                trash = home / f"{_TRASH}{run_dir.name}-{uuid.uuid4().hex[:8]}"
                os.rename(run_dir, trash)  # gone at once for a pretrain that opens it next
                shutil.rmtree(trash)
            removed.append(decided)
        finally:
            if isinstance(fd, int) and fd >= 0:
                os.close(fd)  # releases the lock, after the deletion
    return CollectedRuns(removed, kept)


_HELD, _GONE = "held", "gone"


def _lock(run_dir: Path, *, create: bool) -> int | str:
    """A descriptor holding the run's lock, taken without waiting; -1 when there is no lock file and ``create`` is
    false (a dry run creates nothing); ``_HELD`` when a pretrain holds it; ``_GONE`` when the directory went (another
    gc) or cannot be locked. Never ``hold_lock``: that would write this pid into the file, over the holder's."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return _GONE if create or not run_dir.is_dir() else -1
    except OSError as e:
        log.warning("leaving training run %s alone: cannot lock it (%s)", run_dir.name, e)
        return _GONE
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return _HELD
        raise
    if not is_open_at(fd, path):  # another gc deleted the run after this one opened its lock file: what is there is new
        os.close(fd)
        return _GONE
    return fd


def _decide(run_dir: Path, remaining: Sequence[Artifact], gone: Sequence[Artifact]) -> RunDir:
    run_id = run_dir.name
    trained_here = [a for a in remaining if run_id_of(a) == run_id]
    if trained_here:
        return _describe(run_dir, [a.ref for a in trained_here], reason="model")
    published = {a.ref: a.summary.get("steps") for a in gone if run_id_of(a) == run_id}
    published |= published_models(run_dir)
    steps = checkpoint_steps(run_dir)
    newest = steps[-1] if steps else None
    last_published = max((s for s in published.values() if isinstance(s, int)), default=None)
    finished = bool(published) and (newest is None or (last_published is not None and newest <= last_published))
    return _describe(run_dir, sorted(published, key=_version_order), reason=None if finished else "unfinished")


def published_models(run_dir: Path) -> dict[str, Any]:
    """The model versions published from a run (gone or not) and the step each reached, oldest first."""
    try:
        lines = (run_dir / PUBLISHED).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    recorded = {}
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            entry = json.loads(line)
            recorded[str(entry["ref"])] = entry.get("steps")
    return recorded


def _version_order(ref: str) -> tuple[int, str]:
    number = ref.rpartition("@v")[2]
    return (int(number), ref) if number.isdigit() else (0, ref)


def _describe(run_dir: Path, models: list[str], *, reason: str | None) -> RunDir:
    steps = checkpoint_steps(run_dir)
    return RunDir(run_dir.name, run_dir, _size(run_dir), steps[-1] if steps else None, models, reason)


def _size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a training run rotates its checkpoints meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
