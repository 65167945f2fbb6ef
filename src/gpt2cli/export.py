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

from gpt2cli.artifacts import Artifact
from gpt2cli.bpe.tokenizer import EOT
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import CONFIG_JSON, GPT, WEIGHTS


def export_hf(model: Artifact, out: Path, *, overwrite: bool = False) -> Path:
    if model.kind != "model":
        raise UsageError(f"{model.ref} is a {model.kind} artifact, not a model")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --force to replace it")
    GPT.load(model)  # refuse to export weights that do not load
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
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
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except (OSError, Gpt2Error):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
