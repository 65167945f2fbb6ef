"""Pretraining settings from flags, --config files and the run config: checked before any training starts."""

from __future__ import annotations

from typing import Any

import pytest
import torch


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
        ["--seed", "-1"],
        ["--device", "tpu"],
    ],
)
def test_bad_values_are_one_line_usage_errors(gpt2, flags: list[str]):
    one_line_usage_error(gpt2("pretrain", *flags), flags[0].lstrip("-"))


def test_a_missing_cuda_is_a_usage_error(gpt2, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_usage_error(gpt2("pretrain", "--device", "cuda"), "no CUDA device")
