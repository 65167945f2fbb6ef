"""Pretraining settings: defaults, a TOML file, then command-line flags, resolved into one record.

The paper gives no optimizer settings; the defaults are nanoGPT's GPT-2 reproduction (AdamW, betas
0.9/0.95, weight decay 0.1, lr 6e-4 decaying to 6e-5 with cosine after a linear warmup, clip 1.0).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from gpt2cli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class TrainConfig:
    model_size: str = "tiny"
    n_ctx: int | None = None  # context length; default: the size's
    dropout: float = 0.0
    seq_len: int | None = None  # tokens per training sequence; default: the context length
    micro_batch: int = 8  # sequences per process per forward pass
    global_batch_tokens: int = 8192  # tokens per optimizer step, summed over processes and accumulation
    max_steps: int = 200  # where this run stops
    lr_decay_steps: int | None = None  # length of the schedule; default: max_steps
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    dtype: str = "auto"  # auto: bfloat16 autocast where the device supports it, else float32
    device: str = "auto"
    compile: bool = False
    fsdp: bool = False  # shard parameters, gradients and optimizer state across processes (FSDP2)
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_tokens: int = 48

    def resolved(self) -> TrainConfig:
        return replace(self, lr_decay_steps=self.lr_decay_steps or self.max_steps)

    def run_identity(self) -> dict[str, Any]:
        """The settings that change the computed weights: a checkpoint of a run with the same identity
        can be resumed by this one (how far it goes and how often it reports or saves do not count)."""
        bookkeeping = {
            "max_steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
            "log_every", "sample_tokens", "compile", "fsdp",
        }  # fmt: skip
        return {k: v for k, v in asdict(self.resolved()).items() if k not in bookkeeping}

    def validate(self) -> None:
        positive = ["micro_batch", "global_batch_tokens", "max_steps", "eval_every", "eval_batches",
                    "checkpoint_every", "keep_checkpoints", "log_every"]  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0 <= self.dropout < 1 or self.learning_rate <= 0:
            raise UsageError("warmup-steps must be >= 0, dropout in [0, 1) and learning-rate > 0")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UsageError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")


def load_config(toml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < the TOML file (a [pretrain] table, or top-level keys) < flags that were given."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(TrainConfig)}
    if toml_path is not None:
        try:
            raw = tomllib.loads(Path(toml_path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read config {toml_path}: {e}") from None
        table = raw.get("pretrain", raw)
        unknown = sorted(set(k.replace("-", "_") for k in table) - known)
        if unknown:
            raise UsageError(f"{toml_path}: unknown settings {', '.join(unknown)}")
        values.update({k.replace("-", "_"): v for k, v in table.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = TrainConfig(**values)
    except TypeError as e:
        raise UsageError(f"bad pretrain settings: {e}") from None
    config.validate()
    return config
