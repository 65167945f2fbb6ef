"""Training checkpoints: everything a run needs to continue bit-exactly, written atomically.

A checkpoint is a directory ``step-00000100/state.pt`` that appears by ``rename`` only once it is fully
written and synced, so a kill -9 during a save leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

_STEP = re.compile(r"^step-(\d{8})$")
STATE = "state.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # an earlier attempt reached this step: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; leftovers of interrupted saves are removed."""
    if not run_dir.is_dir():
        return []
    for p in run_dir.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p for p in run_dir.iterdir() if _STEP.match(p.name) and (p / STATE).is_file())


def latest_checkpoint(run_dir: Path, max_step: int) -> Path | None:
    usable = [p for p in checkpoints(run_dir) if int(p.name[5:]) <= max_step]
    return usable[-1] if usable else None


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path / STATE, map_location=device, weights_only=True)
