"""Pretraining settings: defaults, a TOML file, then command-line flags, resolved into one record.

The paper gives no optimizer settings; the defaults are nanoGPT's GPT-2 reproduction (AdamW, betas
0.9/0.95, weight decay 0.1, lr 6e-4 decaying to 6e-5 with cosine after a linear warmup, clip 1.0).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

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
        """Reject values that would otherwise crash deep inside training or silently mean something else."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
                raise UsageError(f"{_flag(f.name)} must be a finite number within float32's range, got {value}")
        at_least = {"micro_batch": 1, "global_batch_tokens": 1, "max_steps": 1, "eval_every": 1, "eval_batches": 1,
                    "checkpoint_every": 1, "keep_checkpoints": 1, "log_every": 1, "warmup_steps": 0,
                    "sample_tokens": 0, "seed": 0}  # fmt: skip
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise UsageError(f"{_flag(name)} must be at least {low}, got {getattr(self, name)}")
        for name in ("n_ctx", "seq_len", "lr_decay_steps"):  # None means the default; 0 must not mean it too
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("n_ctx", "seq_len"):  # a context's position table and attention must fit in memory
            if (getattr(self, name) or 0) > MAX_CONTEXT:
                raise UsageError(f"{_flag(name)} must be at most {MAX_CONTEXT:,}, got {getattr(self, name):,}")
        if self.seed >= 2**63:
            raise UsageError(f"seed must be below 2**63, got {self.seed}")
        if self.learning_rate <= 0:
            raise UsageError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.min_lr > self.learning_rate:
            raise UsageError(f"min-lr {self.min_lr} is above learning-rate {self.learning_rate}: the decay would rise")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UsageError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UsageError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not _DEVICE.match(self.device):
            raise UsageError(f"device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_FLOAT32_MAX = 3.4028234663852886e38  # settings become float32 tensors (the optimizer's learning rate)
MAX_CONTEXT = 1 << 20


def _flag(name: str) -> str:
    return name.replace("_", "-")


def load_config(
    toml_path: Path | None,
    overrides: dict[str, Any],
    *,
    defaults: dict[str, Any] | None = None,
    commands: Collection[str] = (),
) -> TrainConfig:
    """Defaults < ``defaults`` (the run config's [pretrain] table) < the TOML file < flags that were given.

    The file holds settings at the top level, or in a [pretrain] table; then it may be a whole run config
    whose other tables are those of ``commands`` (ignored here), and anything else is an error, not a setting
    silently dropped.
    """
    values = {k: v for k, v in (defaults or {}).items() if v is not None}
    if toml_path is not None:
        values.update(_read_table(Path(toml_path), commands))
        values.pop(TOKENS, None)  # what to train on, not how: see config_tokens
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config


TOKENS = "tokens"  # the one key of a --config file that is no TrainConfig field: the tokens artifact to train on


def config_tokens(toml_path: Path | None, commands: Collection[str] = ()) -> str | None:
    """The tokens artifact a --config file names, if any (as the run config's [pretrain] table may)."""
    return None if toml_path is None else _read_table(Path(toml_path), commands).get(TOKENS)


def _read_table(path: Path, commands: Collection[str]) -> dict[str, Any]:
    """The settings of a --config file, each checked against the type of its TrainConfig field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    table = raw
    if "pretrain" in raw:
        table = raw["pretrain"]
        if not isinstance(table, dict):
            raise UsageError(f"{path}: pretrain must be a table of settings, got {table!r}")
        stray = sorted(k for k, v in raw.items() if k != "pretrain" and not (k in commands and isinstance(v, dict)))
        if stray:
            raise UsageError(f"{path}: {', '.join(stray)} outside the [pretrain] table (not a command's table)")
    types = {**get_type_hints(TrainConfig), TOKENS: str}
    unknown = sorted({k.replace("-", "_") for k in table} - set(types))
    if unknown:
        raise UsageError(f"{path}: unknown settings {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in values:
            raise UsageError(f"{path}: {name} is set twice (as {name.replace('_', '-')} and {name})")
        values[name] = _typed(value, types[name], f"{path}: {key}")
    return values


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` if TOML gave it the field's type (a float field takes an integer too), else a usage error."""
    allowed = set(get_args(hint)) - {type(None)} or {hint}
    if bool in allowed:
        ok = isinstance(value, bool)
    elif int in allowed:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif float in allowed:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = " or ".join(sorted(t.__name__ for t in allowed))
        raise UsageError(f"{where} must be of type {expected}, got {value!r}")
    return value
