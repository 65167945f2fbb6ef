"""`gpt2 export`: a model artifact as a directory that other tools load.

The Hugging Face format is what `transformers.GPT2LMHeadModel.from_pretrained` and
`AutoTokenizer.from_pretrained` read: config.json + model.safetensors (our artifact already stores the
weights in that layout) and the tokenizer as vocab.json / merges.txt / tokenizer.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from gpt2cli.artifacts import Artifact, fsync_dir
from gpt2cli.bpe.tokenizer import EOT
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import CONFIG_JSON, GPT, WEIGHTS

log = logging.getLogger(__name__)


def export_hf(model: Artifact, out: Path, *, overwrite: bool = False, home: Path | None = None) -> Path:
    """Write ``model`` to ``out`` in the Hugging Face layout; returns the directory written.

    ``out`` is built in a hidden work directory next to it and renamed into place, so a crash never leaves half an
    export; what a kill -9 leaves there is removed by the next export to ``out``. ``out`` may not overlap the
    model, an artifact home (``home``, and the model's own) or the current directory: with ``overwrite`` the
    directory there is replaced, and those must never be.
    """
    out = _check_out(Path(out), model, home, overwrite)
    GPT.load(model)  # refuse to export weights that do not load
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        with _work_dir(out) as work:
            _write_hf(model, work / "new")
            _move_into_place(work / "new", out, work / "old")
    except OSError as e:
        raise Gpt2Error(f"cannot export to {out}: {e.strerror or e}") from None
    return out


def _write_hf(model: Artifact, directory: Path) -> None:
    """The Hugging Face files of ``model`` in the new ``directory``, on disk (fsynced) when this returns."""
    directory.mkdir()
    for src, dst in ((CONFIG_JSON, CONFIG_JSON), (WEIGHTS, WEIGHTS), ("encoder.json", "vocab.json"),
                     ("vocab.bpe", "merges.txt"), ("tokenizer.json", "tokenizer.json")):  # fmt: skip
        shutil.copyfile(model.file(src), directory / dst)
    n_ctx = json.loads((directory / CONFIG_JSON).read_text())["n_positions"]
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": n_ctx,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "add_prefix_space": False,
        "add_bos_token": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}, indent=2)
    )
    _fsync_tree(directory)


def _check_out(out: Path, model: Artifact, home: Path | None, overwrite: bool) -> Path:
    """``out`` made absolute, or a usage error when writing there could destroy something else."""
    target = out.expanduser().resolve()  # symlinks followed; "." and ".." get a name
    source = model.path.resolve()
    homes = [Path(home).resolve()] if home is not None else []
    if source.name == model.version and source.parent.name == model.kind:
        homes.append(source.parent.parent)  # a version directory in a home: that home is off limits too
    if _overlap(target, source):
        raise UsageError(f"--out {out} overlaps the exported artifact {model.path}; export outside it")
    for artifact_home in homes:
        if _overlap(target, artifact_home):
            raise UsageError(f"--out {out} overlaps the artifact home {artifact_home}; export outside it")
    if target == Path.cwd() or target in Path.cwd().parents:
        raise UsageError(f"--out {out} holds the current directory; name a directory of its own")
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --force to replace it")
    return target


def _overlap(a: Path, b: Path) -> bool:
    """Whether absolute paths ``a`` and ``b`` are the same directory or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def _fsync_tree(directory: Path) -> None:
    """Files and directory on disk before the rename publishes them, so a power loss cannot publish empty files."""
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(directory)


def _move_into_place(new: Path, out: Path, old: Path) -> None:
    """``new`` renamed to ``out``; an existing ``out`` is renamed to ``old`` first and put back if that fails.

    ``old`` lies in the locked work directory, so a kill mid-swap leaves it where the next export removes it.
    """
    if not out.exists():
        os.rename(new, out)
        return
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise


@contextlib.contextmanager
def _work_dir(out: Path) -> Iterator[Path]:
    """A hidden directory ``.OUT.PID-RANDOM.tmp`` next to ``out``, locked while this export runs, removed after.

    A kill -9 skips the removal but the kernel drops the lock, which is how ``_remove_leftovers`` tells a dead
    export's directory from a running one's. The parent of ``out`` must exist.
    """
    while True:
        work = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        work.mkdir()
        # Between mkdir and the lock another export may take ``work`` for a leftover: wait until it is done
        # with it, and when it removed it, start over under a new name.
        with contextlib.suppress(FileNotFoundError):
            if (fd := _lock_dir(work, wait=True)) is not None:
                break
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)  # closing the descriptor releases the lock


def _lock_dir(path: Path, *, wait: bool = False) -> int | None:
    """A descriptor holding an exclusive flock on the directory ``path``; None when it is locked (without
    ``wait``) or was removed meanwhile. The kernel releases it when the holder dies, even on kill -9.

    An flock on the directory, not ``artifacts.hold_lock``: that locks a file it creates (with its parents),
    so probing a leftover would recreate it, and a lock file would have to be kept out of the export.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _remove_leftovers(out: Path) -> None:
    """Remove the work directories that killed exports to ``out`` left behind (a copy of the weights, and
    mid-swap the previous export): those whose lock is free. A running export holds its lock, so exports to the
    same ``out`` at once never remove each other's work; names not of ``_work_dir``'s form are never touched."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.([0-9]+)-[0-9a-f]{{8}}\.tmp")
    try:
        names = os.listdir(out.parent)
    except OSError:  # a parent we may write but not list: a cleanup never fails the export
        return
    for name in names:
        if not (m := pattern.fullmatch(name)):
            continue
        path = out.parent / name
        try:
            fd = _lock_dir(path)
        except OSError:  # not a directory (or a symlink to one), unreadable: not ours
            continue
        if fd is None:
            continue
        try:
            log.info("removing %s, left by an interrupted export (pid %s)", path, m.group(1))
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
