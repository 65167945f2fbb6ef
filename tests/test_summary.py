from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpt2cli.artifacts import Artifact
from gpt2cli.summary import learning_statement
from tests.conftest import FAST, SAMPLE


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


def test_report_on_a_model_trained_without_a_validation_split(gpt2, tokens_home: Path, home: Path):
    """The README's own path: tokenize the 40-document sample at the default --val-fraction 0.01 (no document
    held out), train, report. No traceback: the report says there is no validation loss instead of a verdict."""
    shutil.copytree(tokens_home, home)
    tokenized = gpt2("tokenize", "--input", str(SAMPLE), "--json")
    assert tokenized.code == 0, tokenized.err
    assert json.loads(tokenized.out)["summary"]["val_documents"] == 0
    assert gpt2("pretrain", *FAST, "--max-steps", "2").code == 0
    args = ("report", "--num-samples", "1", "--max-new-tokens", "2")
    result = gpt2(*args, "--json")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    report = json.loads(result.out)
    learning = report["learning"]
    tokens = learning["tokens"]
    assert learning["val_loss"] is None and learning["learned"] is None and learning["below_unigram"] is None
    assert learning["unigram_entropy"] > 0 and report["val_loss_curve"] == []
    assert learning["statement"].startswith("no validation loss, so whether the model learned beyond token frequencies")
    assert f"{tokens} has no validation split (0 validation documents)" in learning["statement"]
    assert Path(report["loss_png"]).read_bytes()[:4] == b"\x89PNG"  # the training loss alone
    text = gpt2(*args)
    assert text.code == 0 and "Traceback" not in text.err, text.err
    flat = " ".join(text.out.split())  # rich wraps long lines
    assert "training loss (nats/token) by step (no validation loss was computed)" in flat
    assert "(no points)" not in flat and f"learning: {' '.join(learning['statement'].split())}" in flat


@pytest.mark.parametrize(
    ("summary", "inputs", "expected"),
    [
        ({"val_tokens": 0}, [{"ref": "tokenizer@v1"}],
         "tokens@v3 has no validation split (0 validation documents); for one, re-tokenize with a larger "
         "--val-fraction, and train again"),
        ({"val_tokens": 20}, [{"ref": "tokenizer@v1"}],
         "the 20 validation tokens of tokens@v3 are too few for one 32-token sequence; for one, re-tokenize"),
        ({"val_tokens": 0}, [{"ref": "tokenizer@v1"}, {"ref": "corpus@v2"}],
         "tokens@v3 has no validation split (0 validation documents); for one, rebuild corpus@v2 with a larger "
         "`gpt2 dedupe --val-fraction` and re-tokenize, and train again"),
    ],
    ids=["no-split", "too-short", "corpus"],
)  # fmt: skip
def test_the_statement_without_validation_loss_says_why(summary, inputs, expected):
    from gpt2cli.bpe.shards import validation_gap
    from gpt2cli.summary import no_validation_statement

    tokens = Artifact(Path("t"), {"kind": "tokens", "version": "v3", "summary": summary, "inputs": inputs})
    model = Artifact(Path("m"), {"kind": "model", "version": "v1", "params": {"seq_len": 32}})
    statement = no_validation_statement(tokens, model)
    assert statement.startswith("no validation loss, so whether the model learned beyond token frequencies is not")
    assert expected in statement
    if summary["val_tokens"]:  # 20 tokens hold a 16-token sequence, its targets and a choice of start
        assert validation_gap(tokens, 16) is None


def test_the_learning_check_reads_the_tokens_the_model_trained_on_in_their_home(tmp_path: Path):
    """A model trained in home b on home a's tokens: the unigram entropy is of a's tokens, not b's tokens@v1."""
    import math

    import numpy as np

    from gpt2cli.artifacts import Store, artifact_input
    from gpt2cli.bpe.shards import _ShardWriter
    from gpt2cli.summary import learning_check

    def tokens_of(ids: list[int]):
        def build(draft):
            writer = _ShardWriter(draft.dir / "train.bin", 4, 0)
            writer.write(np.array(ids))
            writer.finish()

        return build

    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    theirs = a.produce("tokens", params={}, inputs=[], build=tokens_of([0, 0, 1, 1])).artifact
    b.produce("tokens", params={}, inputs=[], build=tokens_of([0, 1, 2, 3]))
    used = artifact_input(b.open(theirs.path))  # `pretrain --tokens /a/tokens/v1` in home b
    model = b.produce("model", params={}, inputs=[used], build=lambda draft: {"val_loss": 1.0}).artifact
    check = learning_check(b, model)
    assert check["unigram_entropy"] == round(math.log(2), 4)  # a's tokens: two ids, evenly; b's would give log 4
