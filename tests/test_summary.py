from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpt2cli.summary import learning_statement


def test_the_learning_statement_says_below_or_above():
    below = learning_statement(5.0, 6.5, 1000, learned=True)
    assert below.startswith("validation loss 5.000 nats/token is 1.500 below the unigram entropy 6.500 of the 1,000")
    assert below.endswith("uses context, not only token frequencies")
    above = learning_statement(8.3, 6.7, 1000, learned=False)
    assert "is 1.600 above the unigram entropy" in above and above.endswith("has NOT learned beyond frequencies")


def test_report_json_has_the_same_keys_without_an_evaluation(gpt2, model_home: Path, tmp_path: Path):
    home = tmp_path / "home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("eval"))  # other tests evaluate the model
    result = gpt2("report", "--home", str(home), "--json", "--num-samples", "1", "--max-new-tokens", "2")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["eval"] is None and report["eval_rows"] == [] and len(report["samples"]) == 1
