from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2cli.artifacts import Store
from gpt2cli.dedupe.minhash import jaccard
from tests.conftest import SAMPLE, run_cli, run_queued_behind

REDDIT = SAMPLE.parent / "reddit"
NOVEMBER, JANUARY, WARC = REDDIT / "RS_2017-11.zst", REDDIT / "RS_2018-01.zst", REDDIT / "pages.warc.gz"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw-docs@v1 (November) and raw-docs@v2 (November + January) of the embedded sample."""
    home = tmp_path_factory.mktemp("scraped")
    for dumps in ([NOVEMBER], [NOVEMBER, JANUARY]):
        args = [a for d in dumps for a in ("--dump", str(d))]
        result = run_cli(home, "scrape-reddit", *args, "--replay", str(WARC))
        assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def home(scraped: Path, tmp_path: Path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(scraped, target)
    return target


def corpus_rows(home: Path, ref: str = "corpus") -> list[dict]:
    return pq.read_table(Store(home).resolve(ref).file("documents-00000.parquet")).to_pylist()


def articles(n: int) -> list[str]:
    """The bodies of the first ``n`` sample articles (English, long enough, distinct: all pass the filters)."""
    return [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(SAMPLE.glob("*.txt"))][:n]


def error_line(err: str) -> str:
    """The one `gpt2: error:` line of a run's stderr; there is no traceback."""
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("gpt2: error:")]
    return line


def test_dedupe_the_sample(home: Path):
    result = run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["removed_wikipedia"] == 2
    assert summary["removed_exact_duplicates"] == 1  # the mirror of the dumplings recipe
    assert summary["removed_near_duplicates"] >= 1  # the syndicated, edited bike-lanes story
    assert (summary["lsh_bands"], summary["lsh_rows"]) == (35, 3)  # --lsh-recall 0.99 at --threshold 0.5
    rows = corpus_rows(home)
    urls = {r["url"] for r in rows}
    assert not any("wikipedia.org" in u for u in urls)
    assert not any(u.startswith("https://mirror-news.example") for u in urls)
    assert not any(u.startswith("https://regional-wire.example") for u in urls)
    assert not any(("journal-du-quai" in u) or ("noticias-del-valle" in u) for u in urls)  # French, Spanish
    assert {r["split"] for r in rows} == {"train", "val"}
    assert all(r["raw_docs"] == "raw-docs@v1" and r["text"] for r in rows)
    report = json.loads(Store(home).resolve("corpus").file("report.json").read_text())
    assert report["wikipedia"]["removed"] == 2 and report["wikipedia"]["examples"][0]["reason"] == "wikipedia"
    import datasets

    loaded = datasets.load_dataset(
        "parquet", data_files=str(Store(home).resolve("corpus").file("documents-00000.parquet"))
    )
    assert loaded["train"].num_rows == len(rows) == summary["documents"]


def test_incremental_equals_full_recompute(home: Path, tmp_path: Path):
    full_home = tmp_path / "full"
    shutil.copytree(home, full_home)
    full = run_cli(full_home, "dedupe", "--raw-docs", "raw-docs@v1", "--raw-docs", "raw-docs@v2")
    assert full.returncode == 0, full.stderr
    assert run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1").returncode == 0
    incremental = run_cli(home, "dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--json")
    assert incremental.returncode == 0, incremental.stderr
    out = json.loads(incremental.stdout)
    assert out["ref"] == "corpus@v2" and Store(home).resolve("corpus@v2").parent["ref"] == "corpus@v1"
    before = Store(home).resolve("corpus@v1").summary["documents"]
    assert out["summary"]["documents_added"] == out["summary"]["documents"] - before > 0

    def key(rows):
        return sorted((r["url"], r["text"], r["split"], r["score"]) for r in rows)

    assert key(corpus_rows(home)) == key(corpus_rows(full_home))
    assert len(corpus_rows(home)) > len(corpus_rows(home, "corpus@v1"))  # January's documents were added


def test_a_url_is_one_document_incrementally_or_not(tmp_path: Path):
    """A page fetched again (edited, with a higher score) and a copy of it elsewhere: one run on both batches and
    a run per batch keep the same single version (the incremental run dropped the edited page for its URL, and
    the full run kept the URL twice)."""
    old, edited = articles(2)
    batches = [
        [{"url": "https://a.example/p", "text": old, "score": 3}],
        [{"url": "https://a.example/p", "text": edited, "score": 9}, {"url": "https://b.example/q", "text": edited,
                                                                       "score": 5}],
    ]  # fmt: skip
    files = []
    for n, rows in enumerate(batches):
        files.append(tmp_path / f"batch{n}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    full = run_cli(tmp_path / "full", "dedupe", "--input", str(files[0]), "--input", str(files[1]), "--json")
    assert full.returncode == 0, full.stderr
    for f in files:
        step = run_cli(tmp_path / "step", "dedupe", "--input", str(f), "--incremental", "--json")
        assert step.returncode == 0, step.stderr
    expected = [("https://a.example/p", 9)]
    for home in (tmp_path / "full", tmp_path / "step"):
        assert [(r["url"], r["score"]) for r in corpus_rows(home)] == expected
    summary = json.loads(full.stdout)["summary"]
    assert (summary["removed_url_duplicates"], summary["removed_exact_duplicates"]) == (1, 1)


def test_copies_of_one_text_are_not_compared_pair_by_pair(gpt2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Syndicated copies are exact duplicates, joined by their text's key: only one of them enters the LSH index,
    so 300 copies cost no 44,850 Jaccard checks (time and memory were quadratic in the number of copies)."""
    from gpt2cli.dedupe import stage

    text = articles(1)[0]
    rows = [{"url": f"https://mirror{i}.example/a", "text": text} for i in range(300)]
    rows.append({"url": "https://edited.example/a", "text": text.replace(".", "!", 3)})  # a near copy
    path = tmp_path / "copies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checks = []
    monkeypatch.setattr(stage, "jaccard", lambda a, b: checks.append(1) or jaccard(a, b))
    result = gpt2("dedupe", "--input", str(path), "--workers", "1", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert (summary["documents"], summary["removed_exact_duplicates"], summary["removed_near_duplicates"]) == (
        1,
        299,
        1,
    )
    assert len(checks) == 1


def test_incremental_re_signs_a_corpus_made_with_other_permutations(tmp_path: Path):
    """A corpus from a release with another HASH_VERSION: its saved signatures are re-made from its saved
    shingles, so a near duplicate arriving later is still found (its Jaccard to the old document is ~0.8)."""
    texts = [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(SAMPLE.glob("*.txt"))][:6]
    first, later = tmp_path / "first.jsonl", tmp_path / "later.jsonl"
    first.write_text("".join(json.dumps({"text": t, "url": f"https://a{i}.example/x"}) + "\n"
                             for i, t in enumerate(texts)))  # fmt: skip
    words = texts[2].split()
    words[len(words) // 2] = "zebra"  # one word changed: the 5-grams around it differ
    later.write_text(json.dumps({"text": " ".join(words), "url": "https://b.example/copy"}) + "\n")
    home = tmp_path / "home"
    assert run_cli(home, "dedupe", "--input", str(first), "--language", "any").returncode == 0
    state = Store(home).resolve("corpus@v1").path / "dedupe-state"
    screen = json.loads((state / "screen.json").read_text())
    (state / "screen.json").write_text(json.dumps({**screen, "hash_version": 1}))
    old = np.load(state / "signatures.npy")
    np.save(state / "signatures.npy", np.random.default_rng(0).integers(0, 2**32, old.shape, dtype=np.uint32))
    result = run_cli(home, "dedupe", "--input", str(later), "--incremental", "--language", "any", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["removed_near_duplicates"] == 1
    assert "https://b.example/copy" not in {r["url"] for r in corpus_rows(home)}


def test_input_files_planted_duplicates_and_bad_records(gpt2, tmp_path: Path, home: Path):
    texts = [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(SAMPLE.glob("*.txt"))][:12]
    near = texts[0].replace("the", "a", 3)  # a few words changed: Jaccard well above 0.5
    lines = [json.dumps({"text": t, "url": f"https://site{i}.example/a", "score": 10}) for i, t in enumerate(texts)]
    lines += [json.dumps({"text": texts[1], "url": "https://copy.example/b", "score": 1}),
              json.dumps({"text": near, "url": "https://copy.example/c", "score": 99}),
              json.dumps({"text": "", "url": "https://empty.example"}), "{not json"]  # fmt: skip
    path = tmp_path / "docs.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9 latin-1"}\n')
    result = run_cli(home, "dedupe", "--input", str(path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["malformed"] == 1 and summary["invalid_utf8"] == 1 and summary["removed_normalize"] == 1
    rows = corpus_rows(home)
    urls = {r["url"] for r in rows}
    assert "https://copy.example/b" not in urls  # exact copy with a lower score
    assert "https://copy.example/c" in urls and "https://site0.example/a" not in urls  # higher score wins


def test_overlap_report_and_bad_input(home: Path, tmp_path: Path):
    assert run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1").returncode == 0
    rows = corpus_rows(home)
    corpus_text, held_out = tmp_path / "seen.txt", tmp_path / "held-out.txt"
    corpus_text.write_text(next(r["text"] for r in rows if r["split"] == "train"))
    held_out.write_text(next(r["text"] for r in rows if r["split"] == "val"))  # not trained on: Table 6 counts none
    unseen = tmp_path / "unseen.txt"
    unseen.write_text(" ".join(f"zebra{i} quokka{i * 7} marmot{i * 13}" for i in range(300)))
    result = run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1", "--overlap", str(corpus_text), "--overlap",
                     str(unseen), "--overlap", str(held_out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # one JSON document: the result with the overlap in it
    assert out["ref"] == "corpus@v2"
    overlap = out["overlap"]
    assert [o["percent"] for o in overlap] == [100.0, 0.0, 0.0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = run_cli(home, "dedupe", "--input", str(empty))
    assert nothing.returncode == 1 and "no records read" in error_line(nothing.stderr)
    odd = (
        Store(home)
        .produce(
            "raw-docs",
            params={"odd": 1},
            inputs=[],
            build=lambda d: pq.write_table(pa.table({"body": ["x"]}), d.dir / "documents.parquet"),
        )
        .artifact
    )
    bad = run_cli(home, "dedupe", "--raw-docs", odd.ref)
    assert bad.returncode == 1 and "unknown raw-docs schema" in bad.stderr
    damaged = Store(home).produce(
        "raw-docs", params={"odd": 2}, inputs=[], build=lambda d: (d.dir / "documents.parquet").write_bytes(b"PAR1")
    )
    broken = run_cli(home, "dedupe", "--raw-docs", damaged.artifact.ref)
    assert broken.returncode == 1 and "not a readable Parquet file" in error_line(broken.stderr)


def test_drop_documents_that_overlap_an_eval_set(home: Path, tmp_path: Path):
    assert run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1").returncode == 0
    victim = corpus_rows(home)[3]
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(victim["text"])
    result = run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1", "--overlap", str(eval_file), "--drop-overlap", "0.5",
                     "--workers", "1", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["removed_contamination"] == 1
    assert victim["url"] not in {r["url"] for r in corpus_rows(home)}
    assert run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1", "--drop-overlap", "0.5").returncode == 2


def test_sharded_screening_and_merge_equal_one_run(home: Path, tmp_path: Path):
    one = tmp_path / "one"
    shutil.copytree(home, one)
    refs = ("--raw-docs", "raw-docs@v1", "--raw-docs", "raw-docs@v2")
    whole = run_cli(one, "dedupe", *refs, "--json")
    assert whole.returncode == 0, whole.stderr
    shard_refs = []
    for i in range(3):
        result = run_cli(home, "dedupe", *refs, "--shards", "3", "--shard-index", str(i), "--workers", "1", "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["ref"].startswith("dedupe-shard@")
        shard_refs.append(out["ref"])
    # a shard copied from another machine is given by its directory
    moved = tmp_path / "elsewhere"
    shutil.copytree(Store(home).resolve(shard_refs[2]).path, moved)
    bad = run_cli(home, "dedupe", "--merge", shard_refs[0], "--merge", shard_refs[1])
    assert bad.returncode == 2 and "shards 0..2 of 3" in bad.stderr
    other = run_cli(home, "dedupe", "--threshold", "0.7", *(a for r in shard_refs for a in ("--merge", r)))
    assert other.returncode == 2 and "other dedupe settings" in other.stderr
    merged = run_cli(
        home, "dedupe", "--merge", shard_refs[0], "--merge", shard_refs[1], "--merge", str(moved), "--json"
    )
    assert merged.returncode == 0, merged.stderr
    summary, expected = json.loads(merged.stdout)["summary"], json.loads(whole.stdout)["summary"]
    assert summary == expected
    assert corpus_rows(home) == corpus_rows(one)  # same documents, same order, same splits
    report = json.loads(Store(home).resolve("corpus").file("report.json").read_text())
    expected_report = json.loads(Store(one).resolve("corpus").file("report.json").read_text())
    assert {k: (v["in"], v["removed"]) for k, v in report.items()} == {
        k: (v["in"], v["removed"]) for k, v in expected_report.items()
    }
    lineage = run_cli(home, "artifacts", "lineage", "corpus")
    assert "dedupe-shard" in lineage.stdout and "raw-docs@v2" in lineage.stdout


def test_shard_options_are_checked(home: Path):
    assert run_cli(home, "dedupe", "--shards", "3").returncode == 2
    bad = run_cli(home, "dedupe", "--shards", "3", "--shard-index", "3")
    assert bad.returncode == 2 and "--shard-index must be in [0, --shards)" in bad.stderr
    both = run_cli(home, "dedupe", "--merge", "dedupe-shard", "--raw-docs", "raw-docs@v1")
    assert both.returncode == 2


def test_input_takes_text_files_whole_beside_jsonl(gpt2, home: Path, tmp_path: Path):
    """--input reads what README says: a .txt/.md file is one document, a JSONL line another, folders of both."""
    texts = articles(6)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, text in enumerate(texts[:3]):
        (folder / f"article-{i}.txt").write_text(text)
    (folder / "notes.md").write_text(texts[3])
    (folder / "more.jsonl").write_text("".join(json.dumps({"text": t, "url": f"https://s{i}.example/a"}) + "\n"
                                               for i, t in enumerate(texts[4:])))  # fmt: skip
    result = gpt2("dedupe", "--input", str(folder), "--workers", "1", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert summary["documents_in"] == summary["documents"] == 6 and "malformed" not in summary
    one = gpt2("dedupe", "--input", str(folder / "article-0.txt"), "--workers", "1", "--json")
    assert one.code == 0, one.err
    assert json.loads(one.out)["summary"]["documents"] == 1
    assert [r["text"].split()[:5] for r in corpus_rows(home)] == [texts[0].split()[:5]]


def test_lone_surrogates_in_any_field_are_replaced(gpt2, home: Path, tmp_path: Path):
    """JSON escapes of lone surrogates have no UTF-8 form: in a url, a title, a field the stage only carries, or
    the url of a document it removes (shown in the report), they become U+FFFD instead of crashing the run."""
    texts = articles(3)
    lines = [
        '{"text": ' + json.dumps(texts[0]) + ', "url": "https://a.example/\\ud800"}',
        '{"text": ' + json.dumps(texts[1]) + ', "url": "https://b.example/", "title": "\\udc00", "x": ["\\ud801"]}',
        '{"text": "too short", "url": "https://c.example/\\udfff"}',
    ]
    path = tmp_path / "surrogates.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = gpt2("dedupe", "--input", str(path), "--workers", "1", "--language", "any", "--json")
    assert result.code == 0, result.err
    assert sorted(r["url"] for r in corpus_rows(home)) == ["https://a.example/\ufffd", "https://b.example/"]


def test_malformed_records_are_counted_and_skipped(gpt2, home: Path, tmp_path: Path):
    """Records that break a JSON parser, or hold the wrong types, are counted as malformed; a score past int64
    is unknown; a damaged Parquet file is one line naming it."""
    texts = articles(8)
    lines = [json.dumps({"text": t, "url": f"https://good{i}.example/a"}) for i, t in enumerate(texts[:3])]
    lines += ['{"text": "digits", "n": ' + "9" * 5000 + "}", "[" * 200_000, json.dumps({"text": 5}),
              json.dumps({"text": texts[3], "url": 12345}), json.dumps({"text": texts[4], "domain": ["x"]}),
              json.dumps({"text": texts[5], "title": {"a": 1}}), "[1, 2]"]  # fmt: skip
    lines.append(json.dumps({"text": texts[6], "url": "https://big.example/a", "score": 10**30}))
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = gpt2("dedupe", "--input", str(path), "--workers", "1", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert summary["malformed"] == 7 and summary["documents_in"] == summary["documents"] == 4
    assert {r["url"]: r["score"] for r in corpus_rows(home)}["https://big.example/a"] is None
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    pq.write_table(pa.table({"text": texts * 50}), tmp_path / "damaged.parquet", row_group_size=100)
    damaged = bytearray((tmp_path / "damaged.parquet").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 500] = bytes(500)  # a page in the middle: found when read
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    for bad in (garbage, tmp_path / "damaged.parquet"):
        failed = gpt2("dedupe", "--input", str(bad), "--workers", "1")
        assert failed.code == 1 and str(bad) in error_line(failed.err)


def test_overlap_files_are_checked_before_the_work(gpt2, home: Path, tmp_path: Path):
    """A missing or malformed --overlap file fails before anything is published; a malformed JSONL record in
    an eval file is an error (bad data, exit 1), not skipped: the overlap of part of a set would mislead."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t, "url": f"https://s{i}.example/a"}) + "\n"
                            for i, t in enumerate(articles(3))))  # fmt: skip
    missing = gpt2("dedupe", "--input", str(docs), "--overlap", str(tmp_path / "nope.txt"), "--json")
    assert missing.code == 2 and "nope.txt" in error_line(missing.err) and missing.out == ""
    broken = tmp_path / "eval.jsonl"
    broken.write_text(json.dumps({"text": "an evaluation passage"}) + "\n{broken\n")
    bad = gpt2("dedupe", "--input", str(docs), "--overlap", str(broken), "--json")
    assert bad.code == 1 and f"{broken}:2" in error_line(bad.err) and bad.out == ""
    assert Store(home).versions("corpus") == []


@pytest.mark.parametrize(
    "option",
    [("--threshold", "0"), ("--threshold", "1.5"), ("--threshold", "nan"), ("--num-perm", "0"),
     ("--num-perm", "100000"), ("--language", "xx"), ("--val-fraction", "2"), ("--val-fraction", "-1"),
     ("--min-words", "-5"), ("--workers", "-1"), ("--drop-overlap", "1.5"),
     ("--lsh-recall", "1"), ("--lsh-recall", "0")],
)  # fmt: skip
def test_bad_option_values_are_usage_errors(gpt2, tmp_path: Path, option: tuple[str, str]):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": articles(1)[0]}) + "\n")
    evals = ["--overlap", str(docs)] if option[0] == "--drop-overlap" else []
    result = gpt2("dedupe", "--input", str(docs), *option, *evals)
    assert result.code == 2 and error_line(result.err).startswith(f"gpt2: error: {option[0]} must be")


def test_an_empty_corpus_says_why(gpt2, tmp_path: Path):
    """Not "is the input English text?" for every cause: no records read, or the filter that removed them."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{broken\n")
    nothing = gpt2("dedupe", "--input", str(broken), "--workers", "1")
    assert nothing.code == 1 and error_line(nothing.err) == (
        "gpt2: error: no documents: no records read from the input (skipped: 1 malformed)"
    )
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles(2)))
    french = gpt2("dedupe", "--input", str(docs), "--language", "fr", "--workers", "1")
    line = error_line(french.err)
    assert french.code == 1 and "2 by the language filter (--language fr)" in line and "English" not in line


def test_workers_help_shows_one_default(gpt2, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "300")
    help_text = gpt2("dedupe", "--help").out
    [line] = [line for line in help_text.splitlines() if "--workers" in line]
    assert "[default: all cores]" in line and "[default: 0]" not in line


def rows_key(rows: list[dict]) -> list[tuple]:
    return sorted((r["url"], r["text"], r["split"], r["score"]) for r in rows)


def test_incremental_with_other_settings_recomputes_every_input(gpt2, home: Path, tmp_path: Path):
    """New settings on a corpus built incrementally, with nothing new to add: not "nothing new, reusing it" (the
    settings would be ignored) nor an add under two configurations, but a full dedupe of every input the corpus
    holds, equal to one run with those settings."""
    full = tmp_path / "full"
    shutil.copytree(home, full)
    for raw_docs in ("raw-docs@v1", "raw-docs@v2"):
        assert gpt2("dedupe", "--raw-docs", raw_docs, "--incremental", "--workers", "1").code == 0
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--threshold", "0.8", "--workers", "1",
                  "--json")  # fmt: skip
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["ref"] == "corpus@v3" and not out["reused"]
    rebuilt = Store(home).resolve("corpus@v3")
    assert rebuilt.params["config"]["near_threshold"] == 0.8 and rebuilt.params["incremental"] is None
    assert [i["ref"] for i in rebuilt.inputs] == ["raw-docs@v2"]  # it holds every page of raw-docs@v1
    once = gpt2("--home", str(full), "dedupe", "--raw-docs", "raw-docs@v1", "--raw-docs", "raw-docs@v2",
                "--threshold", "0.8", "--workers", "1")  # fmt: skip
    assert once.code == 0, once.err
    assert rows_key(corpus_rows(home)) == rows_key(corpus_rows(full))
    again = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--threshold", "0.8", "--json")
    assert again.code == 0 and json.loads(again.out) == {**out, "reused": True}  # the new settings' corpus: reused


def test_refresh_takes_a_changed_dedupe_table(gpt2, home: Path, tmp_path: Path):
    """`gpt2 refresh` runs `dedupe --incremental` with the run config's [dedupe] table: a change there is a new
    corpus, and the same table again reuses it."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    config = tmp_path / "run.toml"
    config.write_text('[dedupe]\nlanguage = "any"\nworkers = 1\n')
    for reused in (False, True):
        result = gpt2("--run-config", str(config), "--json", "dedupe", "--raw-docs", "raw-docs@v1", "--incremental")
        assert result.code == 0, result.err
        out = json.loads(result.out)
        assert (out["ref"], out["reused"]) == ("corpus@v2", reused)
    assert Store(home).resolve("corpus@v2").params["config"]["language"] is None


def test_a_queued_incremental_run_continues_what_the_run_before_it_published(home: Path, tmp_path: Path):
    """The corpus to continue is chosen once the lock is held: a run that waited behind another incremental run
    continues that run's corpus (it used to continue the one before, dropping the other run's documents)."""
    assert run_cli(home, "dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").returncode == 0
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"url": "https://extra.example/a", "text": articles(12)[-1]}) + "\n")
    code, out, err = run_queued_behind(
        home,
        "corpus",
        ["dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1"],
        ["dedupe", "--input", str(extra), "--incremental", "--workers", "1", "--json"],
    )
    assert code == 0, err
    store = Store(home)
    assert json.loads(out)["ref"] == "corpus@v3" and store.resolve("corpus@v3").parent["ref"] == "corpus@v2"
    urls = {r["url"] for r in corpus_rows(home)}
    assert "https://extra.example/a" in urls and {r["url"] for r in corpus_rows(home, "corpus@v2")} <= urls


def test_incremental_force_and_overlap_with_nothing_new(gpt2, home: Path, tmp_path: Path):
    """--force recomputes and --overlap gets its Bloom filter, even when every input is already in the corpus."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    forced = gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--incremental", "--force", "--workers", "1", "--json")
    assert forced.code == 0, forced.err
    assert json.loads(forced.out)["ref"] == "corpus@v2" and not json.loads(forced.out)["reused"]
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(corpus_rows(home)[0]["text"])
    overlap = gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--incremental", "--overlap", str(eval_file), "--workers",
                   "1", "--json")  # fmt: skip
    assert overlap.code == 0, overlap.err
    out = json.loads(overlap.out)
    assert out["ref"] == "corpus@v3" and out["overlap"][0]["percent"] == 100.0
    assert rows_key(corpus_rows(home, "corpus@v3")) == rows_key(corpus_rows(home, "corpus@v1"))


def test_incremental_refuses_a_damaged_newest_corpus(gpt2, home: Path):
    """A newest corpus whose manifest is damaged is an error: continuing the one before would drop its documents
    from the next version."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1").code == 0
    (Store(home).resolve("corpus@v2").path / "manifest.json").write_text("{damaged")
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1")
    assert result.code == 1
    line = error_line(result.err)
    assert "newest corpus, which is damaged" in line and "corpus/v2/manifest.json" in line
    assert [a.ref for a in Store(home).versions("corpus")] == ["corpus@v1"]  # nothing published


def test_incremental_on_a_state_of_an_older_release_recomputes_first(
    gpt2, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A corpus whose deduplication state an older release wrote cannot be continued: that is found before any
    document is screened, and the run recomputes the corpus from every input (a refresh keeps working)."""
    import gpt2cli.dedupe.stage as stage

    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    (Store(home).resolve("corpus@v1").path / "dedupe-state" / "edges.npy").unlink()
    screened: list[int] = []
    screen = stage.screen_all
    monkeypatch.setattr(stage, "screen_all", lambda *a: screened.append(1) or screen(*a))
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1", "--json")
    assert result.code == 0, result.err
    assert "corpus@v1 has no deduplication state of this version" in result.err and len(screened) == 1
    full = tmp_path / "full"
    shutil.copytree(home, full)
    shutil.rmtree(full / "corpus")
    assert gpt2("--home", str(full), "dedupe", "--raw-docs", "raw-docs@v1", "--raw-docs", "raw-docs@v2").code == 0
    assert rows_key(corpus_rows(home)) == rows_key(corpus_rows(full))


def test_a_recompute_never_reads_part_of_the_inputs(gpt2, home: Path, tmp_path: Path):
    """A corpus to recompute whose input file is gone: a usage error that says what to do, not a corpus that
    silently lacks that file's documents."""
    first, later = tmp_path / "first.jsonl", tmp_path / "later.jsonl"
    texts = articles(4)
    first.write_text("".join(json.dumps({"text": t, "url": f"https://a{i}.example/x"}) + "\n"
                             for i, t in enumerate(texts[:3])))  # fmt: skip
    later.write_text(json.dumps({"text": texts[3], "url": "https://b.example/x"}) + "\n")
    assert gpt2("dedupe", "--input", str(first), "--workers", "1").code == 0
    first.unlink()
    result = gpt2("dedupe", "--input", str(later), "--incremental", "--threshold", "0.8", "--workers", "1")
    assert result.code == 2
    line = error_line(result.err)
    assert "corpus@v1 was made with other dedupe settings (near_threshold)" in line and str(first) in line
    assert "without --incremental" in line and [a.ref for a in Store(home).versions("corpus")] == ["corpus@v1"]


def test_a_recompute_reads_raw_docs_of_another_home_there(home: Path, tmp_path: Path):
    """raw-docs read by path from another home are recorded with that home: a recompute (other settings) reads
    them there again, rather than looking for a version of that name in this home."""
    other = tmp_path / "other"
    raw = Store(home).resolve("raw-docs@v1")
    first = run_cli(other, "dedupe", "--raw-docs", str(raw.path), "--json")
    assert first.returncode == 0, first.stderr
    [entry] = Store(other).resolve("corpus").inputs
    assert entry["ref"] == "raw-docs@v1" and Path(entry["home"]) == home
    again = run_cli(other, "dedupe", "--raw-docs", str(raw.path), "--incremental", "--threshold", "0.8", "--json")
    assert again.returncode == 0, again.stderr
    assert "other dedupe settings (near_threshold)" in again.stderr
    assert json.loads(again.stdout)["summary"]["documents_in"] == json.loads(first.stdout)["summary"]["documents_in"]
    [entry] = Store(other).resolve("corpus").inputs
    assert entry["ref"] == "raw-docs@v1" and Path(entry["home"]) == home


def test_names_that_are_not_utf8(tmp_path: Path):
    """File names are bytes: an input named in Latin-1 is a ``\\xNN`` escape in the corpus's raw_docs column (a
    Parquet string is UTF-8), and a --home named so holds the state and the corpus (pyarrow takes no such path)."""
    texts = articles(3)
    folder = tmp_path / "in"
    folder.mkdir()
    latin1 = folder / os.fsdecode(b"caf\xe9-latin1.txt")
    latin1.write_text(texts[0])
    with open(folder / os.fsdecode(b"more-\xe9.parquet"), "wb") as f:
        pq.write_table(pa.table({"text": texts[1:]}), f)
    home = tmp_path / os.fsdecode(b"h\xe9")
    result = run_cli(home, "dedupe", "--input", str(folder), "--workers", "1", "--overlap", str(latin1), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["documents"] == 3
    with open(Store(home).resolve("corpus").file("documents-00000.parquet"), "rb") as f:
        provenance = sorted(pq.read_table(f, columns=["raw_docs"]).column(0).to_pylist())
    parent = str(folder)
    assert provenance == [f"{parent}/caf\\xe9-latin1.txt", *[f"{parent}/more-\\xe9.parquet"] * 2]


def test_a_corpus_stands_alone_after_gc_removes_the_versions_it_continues(gpt2, home: Path, tmp_path: Path):
    """gc keeps the newest corpus, not the versions it continues: --incremental still knows every input it holds
    (from its history), and a recompute after a settings change reads the raw-docs its history names. raw-docs@v2
    (November and January) holds every page of raw-docs@v1 (November): the history needs v2 alone, so gc removes
    v1, and the recompute from v2 equals one run over both."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1").code == 0
    corpus = Store(home).resolve("corpus@v2")
    history = json.loads((corpus.path / "dedupe-state" / "history.json").read_text())
    assert [e["ref"] for e in history["documents"]] == ["raw-docs@v2"]
    assert [r["ref"] for r in corpus.manifest["retains"]] == ["raw-docs@v2"]
    full = tmp_path / "full"
    shutil.copytree(home, full)
    collected = gpt2("artifacts", "gc", "--keep", "1", "--json")
    assert collected.code == 0, collected.err
    assert sorted(r["ref"] for r in json.loads(collected.out)["removed"]) == ["corpus@v1", "raw-docs@v1"]
    assert "(continues corpus@v1, removed)" in gpt2("artifacts", "lineage", "corpus@v2").out
    again = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--json")
    assert again.code == 0 and json.loads(again.out)["reused"], again.err  # nothing new, without corpus@v1
    changed = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--threshold", "0.8", "--workers", "1")
    assert changed.code == 0, changed.err
    once = gpt2("--home", str(full), "dedupe", "--raw-docs", "raw-docs@v1", "--raw-docs", "raw-docs@v2",
                "--threshold", "0.8", "--workers", "1")  # fmt: skip
    assert once.code == 0 and rows_key(corpus_rows(home)) == rows_key(corpus_rows(full))


def test_gc_keeps_the_raw_docs_a_recompute_needs(gpt2, home: Path):
    """raw-docs@v1 added after raw-docs@v2 covers none of it: the corpus retains both (a recompute reads both),
    so gc keeps raw-docs@v1 although it is neither the newest nor an input of the newest corpus."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--workers", "1").code == 0
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--incremental", "--workers", "1").code == 0
    corpus = Store(home).resolve("corpus")
    assert [i["ref"] for i in corpus.inputs] == ["raw-docs@v1"] and corpus.ref == "corpus@v2"
    assert [r["ref"] for r in corpus.manifest["retains"]] == ["raw-docs@v2", "raw-docs@v1"]
    lineage = json.loads(gpt2("artifacts", "lineage", "corpus", "--json").out)
    assert [(i["ref"], i.get("retained", False)) for i in lineage["inputs"]] == [("raw-docs@v1", False),
                                                                                 ("raw-docs@v2", True)]  # fmt: skip
    assert "raw-docs@v2  (documents of earlier runs)" in gpt2("artifacts", "lineage", "corpus").out
    assert gpt2("artifacts", "gc", "--keep", "1").code == 0
    assert [a.ref for a in Store(home).versions("raw-docs")] == ["raw-docs@v1", "raw-docs@v2"]
    assert [a.ref for a in Store(home).versions("corpus")] == ["corpus@v2"]


def test_a_corpus_without_a_history_reads_the_versions_it_continues(gpt2, home: Path):
    """A corpus an older release made has no history file: what it holds comes from the versions it continues,
    and when gc removed those, the error says to rebuild rather than guess."""
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--workers", "1").code == 0
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1").code == 0
    for version in ("v1", "v2"):
        (home / "corpus" / version / "dedupe-state" / "history.json").unlink()
    again = gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--incremental", "--json")
    assert again.code == 0 and json.loads(again.out)["ref"] == "corpus@v2" and json.loads(again.out)["reused"]
    assert gpt2("artifacts", "gc", "--keep", "1").code == 0
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v2", "--incremental", "--workers", "1")
    line = error_line(result.err)
    assert result.code == 2 and "corpus@v2 was made by an older release, without a history" in line, line


def test_incremental_with_a_changed_drop_overlap_file_recomputes(gpt2, home: Path, tmp_path: Path):
    """--drop-overlap removes what the eval files hold: new eval files filter the documents already in the corpus
    too (a recompute), as one run with them would, instead of only the new records."""
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("nothing of the corpus here\n")
    args = ["--overlap", str(eval_file), "--drop-overlap", "0.5", "--workers", "1", "--json"]
    assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", *args).code == 0
    texts = [r["text"] for r in corpus_rows(home)][:3]
    eval_file.write_text("\n\n".join(texts) + "\n")
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--incremental", *args)
    assert result.code == 0, result.err
    assert "other dedupe settings (drop_overlap_files)" in result.err and not json.loads(result.out)["reused"]
    assert not set(texts) & {r["text"] for r in corpus_rows(home)}


def test_a_merge_records_each_raw_docs_version_once(gpt2, home: Path):
    for index in ("0", "1"):
        assert gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--shards", "2", "--shard-index", index).code == 0
    merged = gpt2("dedupe", "--merge", "dedupe-shard@v1", "--merge", "dedupe-shard@v2", "--incremental", "--json")
    assert merged.code == 0, merged.err
    corpus = Store(home).resolve("corpus")
    history = json.loads((corpus.path / "dedupe-state" / "history.json").read_text())
    assert [e["ref"] for e in history["documents"]] == ["raw-docs@v1"]
    assert [r["ref"] for r in corpus.manifest["retains"]] == ["raw-docs@v1"]


def test_a_short_write_of_the_state_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """numpy's own message for a full disk under np.save names neither the file nor the reason."""
    from gpt2cli.dedupe import state
    from gpt2cli.errors import Gpt2Error

    def short_write(path, array):
        raise OSError("18304 requested and 15328 written")

    monkeypatch.setattr(state.np, "save", short_write)
    path = tmp_path / "signatures.npy"
    with pytest.raises(Gpt2Error, match=rf"^cannot write {path}: 18304 requested and 15328 written \(a full disk\?\)$"):
        state._save(path, np.zeros(3))
