from __future__ import annotations

import json
from pathlib import Path

from gpt2cli.artifacts import Store
from tests.conftest import SHARED_DATA, run_cli, shared_data


def test_zero_shot_on_real_data(model_home: Path):
    shared_data("ptb", "ptb.test.txt")
    shared_data("lambada", "lambada_test.jsonl")
    result = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--task", "lambada", "--limit", "40",
                     "--data-dir", str(SHARED_DATA), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["ptb_ppl"] > summary["ptb_token_ppl"] > 1  # more tokens than words: per-word ppl is larger
    assert 0 <= summary["lambada_acc"] <= 100 and 0 <= summary["lambada_acc_stopword_filter"] <= 100
    metrics = json.loads(Store(model_home).resolve("eval").file("metrics.json").read_text())
    first_lines = (SHARED_DATA / "ptb" / "ptb.test.txt").read_text().split("\n")[:40]
    assert metrics["results"]["ptb"]["words"] == sum(len(line.split()) + 1 for line in first_lines)
    assert metrics["results"]["lambada"]["examples"] == 40
    table = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--limit", "40", "--data-dir", str(SHARED_DATA),
                    "--dtype", "float32")  # fmt: skip
    assert table.returncode == 0 and "ptb ppl" in table.stdout


def test_bad_tasks_and_missing_data(model_home: Path, tmp_path: Path):
    unknown = run_cli(model_home, "eval", "zero-shot", "--task", "squad")
    assert unknown.returncode == 2 and "unknown task 'squad'; tasks: wikitext2" in unknown.stderr
    missing = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path))
    assert missing.returncode == 1
    assert f"{tmp_path}/ptb/ptb.test.txt not found; get it from" in missing.stderr
    nothing = run_cli(model_home, "eval", "zero-shot", "--data-dir", str(tmp_path))
    assert nothing.returncode == 2 and "no task has its data" in nothing.stderr
