from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2cli.bpe import Tokenizer
from gpt2cli.bpe.tokenizer import pretokenize
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.documents import split_for
from tests.bpe_oracle import brute_force_merges
from tests.conftest import shared_data

SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "articles"

words = st.dictionaries(
    st.binary(min_size=1, max_size=8).map(lambda b: bytes(x % 6 + 97 for x in b)),  # small alphabet: many ties
    st.integers(min_value=1, max_value=20),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(word_counts=words, num_merges=st.integers(min_value=1, max_value=40), min_frequency=st.integers(0, 3))
def test_incremental_merges_equal_brute_force(word_counts, num_merges, min_frequency):
    assert learn_merges(word_counts, num_merges, min_frequency=min_frequency) == brute_force_merges(
        word_counts, num_merges, min_frequency
    )


@settings(max_examples=150, deadline=None)
@given(
    word_counts=st.dictionaries(
        st.binary(min_size=2, max_size=24).map(lambda b: bytes(x % 2 + 97 for x in b)),  # runs: aaaa, abab, aabaab
        st.integers(min_value=1, max_value=5),
        max_size=12,
    )
)
def test_merges_of_overlapping_runs_equal_brute_force(word_counts):
    # A merge updates only the neighbours of each occurrence; runs of one pair are where that can go wrong.
    assert learn_merges(word_counts, 30, min_frequency=1) == brute_force_merges(word_counts, 30, 1)


def test_merges_on_real_text_equal_brute_force():
    text = shared_data("wikitext-2", "wiki.valid.tokens").read_text(encoding="utf-8")[:150_000]
    counts = count_corpus([text], workers=1)
    assert learn_merges(counts, 150) == brute_force_merges(counts, 150)


def test_sample_articles_merges_equal_brute_force():
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))[:8]]
    counts = count_corpus(texts, workers=1)
    assert learn_merges(counts, 120) == brute_force_merges(counts, 120)


def test_long_runs_in_one_word_equal_brute_force():
    word_counts = {b"xy" * 5_000 + b"x" * 9_001 + b"yx" * 3_000: 2, b"xxy": 3}
    assert learn_merges(word_counts, 25, min_frequency=1) == brute_force_merges(word_counts, 25, 1)


def test_one_enormous_pre_token_trains_in_seconds():
    # Two million characters without a space are one pre-token; merging used to shift the word once per
    # occurrence (quadratic: past two minutes). Each merge now copies the word once.
    started = time.perf_counter()
    merges = learn_merges({b"x" * 2_000_000: 1}, 40, min_frequency=1)
    assert time.perf_counter() - started < 30
    assert merges[:3] == [(b"x", b"x"), (b"xx", b"xx"), (b"xxxx", b"xxxx")]


def test_tie_rule_prefers_smallest_bytes():
    # every pair occurs exactly twice: the lexicographically smallest pair (b"a", b"b") must merge first
    merges = learn_merges({b"ba": 2, b"ab": 2, b"cd": 2}, 1)
    assert merges == [(b"a", b"b")]


def test_counting_is_the_same_on_any_number_of_workers():
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    expected = Counter(piece.encode() for t in texts for piece in pretokenize(t))
    assert count_corpus(texts, workers=1) == expected
    assert count_corpus(texts * 3, workers=2) == Counter({k: 3 * v for k, v in expected.items()})
    # many small batches, more than the 2 x workers kept in flight: each is counted exactly once
    for on_batch in (None, lambda chars: None):
        many = count_corpus(texts * 3, workers=2, on_batch=on_batch, batch_chars=5000)
        assert many == Counter({k: 3 * v for k, v in expected.items()})
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    assert learn_merges(count_corpus(shuffled, workers=2), 300) == learn_merges(count_corpus(texts, workers=1), 300)


def test_stops_when_no_pair_is_frequent_enough():
    assert learn_merges({b"abc": 1}, 10) == []
    assert learn_merges({b"abc": 1}, 10, min_frequency=1) == [(b"a", b"b"), (b"ab", b"c")]


def test_train_bpe_stage(gpt2, home: Path, tmp_path: Path):
    result = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "700", "--val-fraction", "0.2", "--json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["ref"] == "tokenizer@v1" and not out["reused"]
    summary = out["summary"]
    assert summary["vocab_size"] == 700 and summary["merges"] == 443
    assert summary["train_documents"] + summary["val_documents"] == 40 and summary["val_documents"] > 0
    assert 2.0 < summary["val_bytes_per_token"] < 4.0
    assert summary["distinct_pretokens"] > 1000 and summary["engine_matches_reference_on_val"] is True
    folder = Path(out["path"])
    assert {p.name for p in folder.iterdir()} == {"encoder.json", "vocab.bpe", "tokenizer.json", "manifest.json"}
    tok = Tokenizer.load(folder)
    assert tok.vocab_size == 700 and tok.eot_id == 699
    text = (SAMPLE / "001-council-approves-bike-lanes.txt").read_text()
    assert tok.decode(tok.encode(text)) == text
    # the same run again reuses the version; another vocab size makes a new one
    again = json.loads(
        gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "700", "--val-fraction", "0.2", "--json").out
    )
    assert again["reused"] and again["ref"] == "tokenizer@v1"
    other = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "600", "--val-fraction", "0.2", "--json")
    assert json.loads(other.out)["ref"] == "tokenizer@v2"


def test_train_bpe_reads_jsonl_and_parquet_and_counts_malformed(gpt2, tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    jsonl = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": t}) for t in texts[:20]] + ["{broken", json.dumps({"title": "no text"}), ""]
    jsonl.write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": texts[20:]}), tmp_path / "docs.parquet")
    result = gpt2(
        "train-bpe", "--input", str(jsonl), "--input", str(tmp_path / "docs.parquet"), "--vocab-size", "400", "--json"
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert summary["malformed_records"] == 2
    assert summary["train_documents"] + summary["val_documents"] == 40


def test_a_vocabulary_learned_from_code_is_read_by_the_next_stage(gpt2, tmp_path: Path):
    """Haskell's `<|>` and `<||>` become tokens shaped like <|endoftext|>; tokenize must still load the files."""
    (tmp_path / "code").mkdir()
    for i in range(30):
        (tmp_path / "code" / f"{i}.txt").write_text(f"parse{i} = a<|>b<|>c\nalt = x<||>y\n")
    trained = gpt2("train-bpe", "--input", str(tmp_path / "code"), "--vocab-size", "300", "--val-fraction", "0")
    assert trained.code == 0, trained.err
    tokens = gpt2("tokenize", "--input", str(tmp_path / "code"), "--val-fraction", "0", "--json")
    assert tokens.code == 0, tokens.err
    assert json.loads(tokens.out)["summary"]["train_documents"] == 30


_TEST_PROCESS = os.getpid()


def _counts_here_dies_in_a_worker(texts: list[str]) -> Counter[str]:
    from gpt2cli.bpe.train import pretokenize

    if os.getpid() != _TEST_PROCESS:
        os._exit(9)
    return Counter(piece for text in texts for piece in pretokenize(text))


def test_a_worker_killed_mid_count_is_one_error_line(gpt2, monkeypatch: pytest.MonkeyPatch):
    """The OOM killer taking a forked counter: one line and exit 1, not BrokenProcessPool's traceback."""
    from gpt2cli.bpe import train

    monkeypatch.setattr(train, "count_pretokens", _counts_here_dies_in_a_worker)
    result = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "300", "--workers", "2")
    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        "gpt2: error: a worker process died (killed, or out of memory?); nothing was published"
    )
    assert "Traceback" not in result.err


def test_train_bpe_bad_input(gpt2, tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   "}\nnot json\n')
    result = gpt2("train-bpe", "--input", str(empty))
    assert result.code == 1 and "no training text (1 malformed, 1 empty records)" in result.err
    missing = gpt2("train-bpe", "--input", str(tmp_path / "nope.txt"))
    assert missing.code == 2 and "does not exist" in missing.err
    no_corpus = gpt2("train-bpe")
    assert no_corpus.code == 2 and "run `gpt2 dedupe`" in no_corpus.err
    small = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "100")
    assert small.code == 2 and "at least 257" in small.err
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert gpt2("train-bpe", "--input", str(tmp_path / "image.png")).code == 2


def test_more_workers_than_cores_are_as_many_as_the_cores(gpt2):
    cores = len(os.sched_getaffinity(0))
    result = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "260", "--workers", str(10**30), "--json")
    assert result.code == 0, result.err
    assert f"--workers {10**30} is more than the {cores} cores here: using {cores}" in result.err


def test_train_bpe_says_when_every_document_went_to_validation(gpt2, tmp_path: Path):
    text = next(t for t in (f"document {i}" for i in range(1000)) if split_for(t, 0.5) == "val")
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
    result = gpt2("train-bpe", "--input", str(tmp_path / "one.jsonl"), "--val-fraction", "0.5")
    assert result.code == 1 and result.err.splitlines()[-1].startswith("gpt2: error: ")
    assert "--val-fraction 0.5 puts all 1 documents in the validation split" in result.err


@pytest.mark.parametrize(
    ("option", "value"), [("--min-frequency", "-3"), ("--min-frequency", "0"), ("--workers", "-1")]
)
def test_train_bpe_refuses_out_of_range_options(gpt2, option: str, value: str):
    result = gpt2("train-bpe", "--input", str(SAMPLE), option, value)
    assert result.code == 2 and result.err.startswith("gpt2: error: ") and len(result.err.splitlines()) == 1
    assert option in result.err
