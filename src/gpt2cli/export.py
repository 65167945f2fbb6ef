"""`gpt2 export`: a model artifact as a directory that other tools load.

The Hugging Face format is what `transformers.GPT2LMHeadModel.from_pretrained` and
`AutoTokenizer.from_pretrained` read: config.json + model.safetensors (our artifact already stores the
weights in that layout) and the tokenizer as vocab.json / merges.txt / tokenizer.json.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from gpt2cli.artifacts import Artifact, fsync_dir
from gpt2cli.bpe.tokenizer import EOT
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import CONFIG_JSON, GPT, WEIGHTS


def export_hf(model: Artifact, out: Path, *, overwrite: bool = False, home: Path | None = None) -> Path:
    """Write ``model`` to ``out`` in the Hugging Face layout; returns the directory written.

    ``out`` is built in a hidden directory next to it and renamed into place, so a crash never leaves half an
    export. ``out`` may not overlap the model, an artifact home (``home``, and the model's own) or the current
    directory: with ``overwrite`` the directory there is replaced, and those must never be.
    """
    out = _check_out(Path(out), model, home, overwrite)
    GPT.load(model)  # refuse to export weights that do not load
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        for src, dst in ((CONFIG_JSON, CONFIG_JSON), (WEIGHTS, WEIGHTS), ("encoder.json", "vocab.json"),
                         ("vocab.bpe", "merges.txt"), ("tokenizer.json", "tokenizer.json")):  # fmt: skip
            shutil.copyfile(model.file(src), tmp / dst)
        n_ctx = json.loads((tmp / CONFIG_JSON).read_text())["n_positions"]
        tokenizer_config = {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": n_ctx,
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "add_prefix_space": False,
            "add_bos_token": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}, indent=2)
        )
        _fsync_tree(tmp)
        _move_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Gpt2Error(f"cannot export to {out}: {e.strerror or e}") from None
    except Gpt2Error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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


def _move_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` renamed to ``out``; an existing ``out`` is renamed aside first and put back if that fails."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
