"""Training checkpoints: everything a run needs to continue bit-exactly, written atomically.

A checkpoint is a directory ``step-00000100/state.pt`` that appears by ``rename`` only once it is fully
written and synced, so a kill -9 during a save leaves the previous checkpoints untouched. ``state.pt.sha256``
beside it catches damage torch.load would not notice (a flipped byte in a tensor loads as a different model).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from gpt2cli.artifacts import sha256_file
from gpt2cli.errors import Gpt2Error
from gpt2cli.train.runs import STATE, STEP_DIR

_STEP = STEP_DIR


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / STATE, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as e:  # how torch reports a failed write (a full disk, a file size limit)
                raise OSError(f"cannot write the checkpoint {final}: {str(e).splitlines()[0]}") from None
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / _CHECKSUM, "w") as f:
            f.write(sha256_file(tmp / STATE) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoints stay as they were
        raise
    if final.exists():  # an earlier attempt reached this step: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # the newest `keep` up to this step stay; later steps stay too (a rerun with an earlier --max-steps makes
    # the same ones again), and so do directories a kill left half deleted, removed here
    earlier = [p for p in checkpoints(run_dir) if _step_of(p) < step]
    for old in earlier[: max(0, len(earlier) - (keep - 1))] + _half_deleted(run_dir):
        shutil.rmtree(old, ignore_errors=True)
    return final


def discard_checkpoints(run_dir: Path) -> int:
    """Delete every checkpoint of a run (``--restart``: they must not be resumed from later); how many."""
    found = checkpoints(run_dir)
    for path in found + _half_deleted(run_dir):
        shutil.rmtree(path, ignore_errors=True)
    return len(found)


def _step_of(path: Path) -> int:
    return int(path.name[5:])


def _half_deleted(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if _STEP.match(p.name) and not (p / STATE).is_file()]


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; leftovers of interrupted saves are removed."""
    if not run_dir.is_dir():
        return []
    for p in run_dir.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p for p in run_dir.iterdir() if _STEP.match(p.name) and (p / STATE).is_file())


def usable_checkpoints(run_dir: Path, max_step: int) -> list[Path]:
    """Checkpoints at or before ``max_step``, newest first."""
    return [p for p in reversed(checkpoints(run_dir)) if _step_of(p) <= max_step]


def latest_checkpoint(run_dir: Path, max_step: int) -> Path | None:
    usable = usable_checkpoints(run_dir, max_step)
    return usable[0] if usable else None


class CheckpointError(Gpt2Error):
    """A checkpoint that cannot be read back: truncated, corrupted, or not one of ours."""


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    checksum = path / _CHECKSUM
    if checksum.is_file():  # checkpoints of earlier releases have none
        expected = checksum.read_text().strip()
        if sha256_file(path / STATE) != expected:
            raise CheckpointError(f"{path / STATE} is damaged (its sha256 differs from {checksum.name})")
    try:
        state = torch.load(path / STATE, map_location=device, weights_only=True)
    except Exception as e:  # a damaged file fails in many ways (zip, pickle, storage errors); all mean unreadable
        first_line = next(iter(str(e).splitlines()), "")
        raise CheckpointError(f"{path / STATE} is unreadable ({type(e).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not _KEYS <= state.keys():
        raise CheckpointError(f"{path / STATE} is not a complete training checkpoint")
    return state


_KEYS = {"step", "model", "optimizer", "rng", "history"}
_CHECKSUM = STATE + ".sha256"
