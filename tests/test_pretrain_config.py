"""Pretraining settings from flags, --config files and the run config: checked before any training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gpt2cli.train.config import TrainConfig

SAMPLE_RUN_CONFIG = Path(__file__).parent.parent / "data" / "sample" / "run.toml"


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """The settings `gpt2 pretrain` would train with (training itself is replaced by recording them)."""
    seen: list[TrainConfig] = []

    def record(store: Any, *, cfg: TrainConfig, **_: Any) -> None:
        seen.append(cfg)

    monkeypatch.setattr("gpt2cli.train.loop.pretrain", record)
    return seen


def one_line_usage_error(result: Any, *words: str) -> None:
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2: error: "), result.err
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    "flags",
    [
        ["--seq-len", "-64"],
        ["--seq-len", "0"],  # not "the full context"
        ["--n-ctx", "0"],
        ["--n-ctx", "-8"],
        ["--lr-decay-steps", "-5"],
        ["--learning-rate", "nan"],
        ["--learning-rate", "inf"],
        ["--min-lr", "-1"],
        ["--grad-clip", "-1"],
        ["--weight-decay", "-0.1"],
        ["--sample-tokens", "-1"],
        ["--keep-checkpoints", "0"],
        ["--seed", "-1"],
        ["--device", "tpu"],
        ["--learning-rate", "1e39"],  # finite, but no float32: the optimizer's tensor would overflow
        ["--min-lr", "1e39"],
        ["--min-lr", "0.01", "--learning-rate", "0.001"],  # the decay would rise
        ["--n-ctx", "99999999999999999"],
    ],
)
def test_bad_values_are_one_line_usage_errors(gpt2, flags: list[str]):
    one_line_usage_error(gpt2("pretrain", *flags), flags[0].lstrip("-"))


def test_a_missing_cuda_is_a_usage_error(gpt2, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_usage_error(gpt2("pretrain", "--device", "cuda"), "no CUDA device")


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('seq_len = "64"', "seq_len"),
        ("pretrain = 5", "pretrain"),
        ('compile = "yes"', "compile"),
        ('compile = "no"', "compile"),
        ("warmup_steps = true", "warmup_steps"),
        ("micro_batch = 4.5", "micro_batch"),
        ("[pretrain]\nmodel_size = 4", "model_size"),
        ("max_steps = 3\n[pretrain]\nseed = 7", "max_steps"),  # a top-level key beside [pretrain]
        ("dedupe = 3\n[pretrain]\nseed = 7", "dedupe"),  # a command's name, but not a table
        ("[pretrain]\nseed = 7\n[bogus]\nx = 1", "bogus"),
        ("max_steps = 3\nmax-steps = 4", "max_steps is set twice"),
    ],
)
def test_bad_config_files_are_one_line_usage_errors(gpt2, trained, tmp_path: Path, toml: str, named: str):
    path = tmp_path / "cfg.toml"
    path.write_text(toml + "\n")
    one_line_usage_error(gpt2("pretrain", "--config", str(path)), str(path), named)
    assert trained == []


def test_config_files_are_typed_and_may_be_a_whole_run_config(gpt2, trained, tmp_path: Path):
    path = tmp_path / "cfg.toml"
    path.write_text("learning_rate = 1\ncompile = true\nn_ctx = 64\n")
    assert gpt2("pretrain", "--config", str(path)).code == 0
    assert trained[-1].learning_rate == 1.0 and isinstance(trained[-1].learning_rate, float)
    assert trained[-1].compile is True and trained[-1].n_ctx == 64
    assert gpt2("pretrain", "--config", str(SAMPLE_RUN_CONFIG)).code == 0  # its other tables are other commands'
    assert trained[-1].model_size == "mini" and trained[-1].max_steps == 300


def test_precedence_flags_then_config_then_run_config(gpt2, trained, tmp_path: Path):
    run_config, config = tmp_path / "rc.toml", tmp_path / "cfg.toml"
    run_config.write_text('[pretrain]\nmodel_size = "mini"\nseq_len = 64\nmax_steps = 9\n')
    config.write_text('model_size = "tiny"\nmax_steps = 5\n')
    assert gpt2("--run-config", str(run_config), "pretrain").code == 0
    assert (trained[-1].model_size, trained[-1].seq_len, trained[-1].max_steps) == ("mini", 64, 9)
    assert gpt2("--run-config", str(run_config), "pretrain", "--config", str(config)).code == 0
    assert (trained[-1].model_size, trained[-1].seq_len, trained[-1].max_steps) == ("tiny", 64, 5)
    result = gpt2("--run-config", str(run_config), "pretrain", "--config", str(config), "--max-steps", "2")
    assert result.code == 0
    assert (trained[-1].model_size, trained[-1].seq_len, trained[-1].max_steps) == ("tiny", 64, 2)
    assert gpt2("--run-config", str(run_config), "pretrain", "--keep-checkpoints", "5").code == 0
    assert trained[-1].keep_checkpoints == 5


def test_config_may_name_the_tokens_below_the_flag_and_above_the_run_config(
    gpt2, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    chosen: list[str] = []
    monkeypatch.setattr("gpt2cli.train.loop.pretrain", lambda store, *, tokens_ref, **_: chosen.append(tokens_ref))
    run_config, config = tmp_path / "rc.toml", tmp_path / "cfg.toml"
    run_config.write_text('[pretrain]\ntokens = "tokens@v1"\n')
    config.write_text('[pretrain]\ntokens = "tokens@v2"\nmax_steps = 5\n')
    assert gpt2("pretrain").code == 0 and gpt2("--run-config", str(run_config), "pretrain").code == 0
    assert gpt2("--run-config", str(run_config), "pretrain", "--config", str(config)).code == 0
    assert gpt2("pretrain", "--config", str(config), "--tokens", "tokens@v3").code == 0
    assert chosen == ["tokens", "tokens@v1", "tokens@v2", "tokens@v3"]
    config.write_text("tokens = 3\n")
    one_line_usage_error(gpt2("pretrain", "--config", str(config)), "tokens")
