from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.generation import first_sentences, generate_continuations
from gpt2cli.eval.summarize import Article, evaluate_cnn_dm, read_cnn_dm, rouge_scores, summary_prompt
from gpt2cli.model import GPT
from tests.conftest import tiny_gpt

N_CTX = 96
NEW = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    return tiny_gpt(tokenizer.vocab_size, N_CTX)


@pytest.fixture(scope="module")
def articles(texts: list[str]) -> list[Article]:
    """Articles of 10-200 words cut from the sample texts; highlights are the article's first 2 sentences."""
    rng = random.Random(0)
    out = []
    for i, text in enumerate(texts[:7]):
        words = text.split()
        n = rng.randint(10, 200)
        article = " ".join(words[:n])
        out.append(Article(article, "\n".join(first_sentences(article, 2).split(". ")), f"id{i}"))
    return out


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_cnn_dm_jsonl_and_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"article": "LONDON (CNN) -- A cat sat.\nIt was happy.", "highlights": "Cat sat .\nHappy cat .", "id": "a1"},
        {"article": "Second article.", "highlights": "Second .", "id": "b2"},
    ]
    expected = [Article(r["article"], r["highlights"], r["id"]) for r in rows]
    assert read_cnn_dm(write_jsonl(tmp_path / "test.jsonl", rows)) == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    assert read_cnn_dm(tmp_path / "test.parquet") == expected
    no_id = [{k: v for k, v in r.items() if k != "id"} for r in rows]
    assert read_cnn_dm(write_jsonl(tmp_path / "x.json", no_id))[0] == Article(rows[0]["article"], rows[0]["highlights"])


def test_read_cnn_dm_errors(tmp_path: Path):
    good = {"article": "Text.", "highlights": "T ."}
    for bad in ('{"article": "x"}', '{"article": "", "highlights": "y"}', "[1]", "{oops"):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(Gpt2Error, match=r"bad\.jsonl:2:"):
            read_cnn_dm(path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"article": "a", "summary": "b"}]), tmp_path / "bad.parquet")
    with pytest.raises(Gpt2Error, match=r"bad\.parquet: no column highlights"):
        read_cnn_dm(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([good, {"article": "a", "highlights": ""}]), tmp_path / "bad.parquet")
    with pytest.raises(Gpt2Error, match=r"bad\.parquet: row 1: 'highlights'"):
        read_cnn_dm(tmp_path / "bad.parquet")
    (tmp_path / "data.csv").write_text("article,highlights\n")
    with pytest.raises(Gpt2Error, match=r"expected a \.jsonl"):
        read_cnn_dm(tmp_path / "data.csv")


def test_summary_prompt_keeps_the_article_start_and_the_hint(tokenizer: Tokenizer, texts: list[str]):
    hint = tokenizer.encode("\nTL;DR:")
    short = summary_prompt(tokenizer, "A short article.\n", N_CTX, NEW)
    assert tokenizer.decode(short) == "A short article.\nTL;DR:"
    long = summary_prompt(tokenizer, texts[0], N_CTX, NEW)
    assert len(long) == N_CTX - NEW and long[-len(hint) :] == hint
    assert long[: -len(hint)] == tokenizer.encode(texts[0].strip())[: N_CTX - NEW - len(hint)]


def test_rouge_scores_hand_made():
    assert rouge_scores(["the cat sat"], ["the cat sat"]) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    scores = rouge_scores(["cats sat on a mat", "nothing here"], ["The cat sat.\nOn the mat.", "other words"])
    # first pair after lower-casing and stemming: "cat sat on a mat" vs "the cat sat on the mat"; second: 0

    def f(p: float, r: float) -> float:
        return 2 * p * r / (p + r)

    assert scores["rouge1"] == pytest.approx(100 * f(4 / 5, 4 / 6) / 2)  # cat, sat, on, mat
    assert scores["rouge2"] == pytest.approx(100 * f(2 / 4, 2 / 5) / 2)  # "cat sat", "sat on"
    assert scores["rougeL"] == pytest.approx(100 * f(4 / 5, 4 / 6) / 2)  # LCS "cat sat on mat"


def test_evaluate_cnn_dm(model: GPT, tokenizer: Tokenizer, articles: list[Article]):
    prompts = [summary_prompt(tokenizer, a.article, N_CTX, NEW) for a in articles]
    gens = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=NEW, temperature=1.0, top_k=2, stop=(), seed=3, batch_size=1
    )
    summaries = [first_sentences(g.text, 3) for g in gens]
    # make one article's highlights its own summary: its ROUGE is 100
    articles = [*articles[:2], Article(articles[2].article, summaries[2] or "x", "own"), *articles[3:]]
    result = evaluate_cnn_dm(model, tokenizer, articles, batch_size=4, seed=3, max_new_tokens=NEW)
    assert list(result.summaries) == summaries
    assert result.scores == pytest.approx(rouge_scores(summaries, [a.highlights for a in articles]))
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    each = [scorer.score(a.highlights, s) for s, a in zip(summaries, articles, strict=True)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert result.scores[name] == pytest.approx(100 * sum(e[name].fmeasure for e in each) / len(each))
    assert result.scores["rouge1"] >= 100 / len(articles)
    again = evaluate_cnn_dm(model, tokenizer, articles[:3], batch_size=2, seed=3, max_new_tokens=NEW)
    assert list(again.summaries) == summaries[:3]  # seeded per article: a prefix is reproduced
    other = evaluate_cnn_dm(model, tokenizer, articles, batch_size=4, seed=4, max_new_tokens=NEW)
    assert list(other.summaries) != summaries
    report = result.as_dict()
    assert report["task"] == "cnn-dm" and report["examples"] == len(articles) and report["top_k"] == 2
    assert len(report["samples"]) == 3 and report["samples"][0]["summary"] == summaries[0]
    json.dumps(report)
