from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.artifacts import Store
from gpt2cli.bpe import Tokenizer, shards
from gpt2cli.bpe.shards import HEADER, TokenShard, _ShardWriter, dtype_for
from gpt2cli.errors import Gpt2Error

SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "articles"


@pytest.fixture
def tokenizer_ref(gpt2) -> str:
    result = gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", "600", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["ref"]


def test_tokenize_stage_writes_train_and_val_shards(gpt2, tokenizer_ref: str, store: Store):
    result = gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "0.2", "--json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    summary = out["summary"]
    assert summary["tokenizer"] == tokenizer_ref and summary["dtype"] == "uint16"
    tok = Tokenizer.load(store.resolve(tokenizer_ref))
    texts = {p.read_text(encoding="utf-8") for p in SAMPLE.glob("*.txt")}
    seen = set()
    for split in ("train", "val"):
        shard = TokenShard.open(Path(out["path"]) / f"{split}.bin")
        assert shard.count == summary[f"{split}_tokens"] and shard.vocab_size == 600
        ids = shard.tokens()
        assert ids[0] == tok.eot_id  # every document, the first included, is preceded by <|endoftext|>
        docs = tok.decode(ids.tolist(), errors="strict").split("<|endoftext|>")[1:]
        assert len(docs) == summary[f"{split}_documents"]
        seen |= set(docs)
    assert seen == texts
    assert 1.5 < summary["train_bytes_per_token"] < 4
    # the tokens artifact's lineage leads back to the tokenizer and the files
    manifest = store.resolve("tokens").manifest
    assert manifest["inputs"][0]["ref"] == tokenizer_ref and len(manifest["inputs"]) == 41


def test_the_same_bytes_read_another_way_are_another_input(gpt2, tokenizer_ref: str, tmp_path: Path):
    lines = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(3)).encode()
    (tmp_path / "docs.txt").write_bytes(lines)  # one text document holding three lines of JSON
    (tmp_path / "docs.jsonl").write_bytes(lines)  # three documents
    args = ["tokenize", "--val-fraction", "0", "--json", "--input"]
    as_text = json.loads(gpt2(*args, str(tmp_path / "docs.txt")).out)
    as_jsonl = json.loads(gpt2(*args, str(tmp_path / "docs.jsonl")).out)
    assert as_jsonl["ref"] != as_text["ref"] and not as_jsonl["reused"]
    assert (as_text["summary"]["train_documents"], as_jsonl["summary"]["train_documents"]) == (1, 3)
    again = json.loads(gpt2(*args, str(tmp_path / "docs.jsonl")).out)
    assert again["ref"] == as_jsonl["ref"] and again["reused"]


def test_an_artifact_from_another_home_is_found_in_that_home(gpt2, tmp_path: Path):
    """A tokenizer named by its path in another home is recorded with that home: this home's own tokenizer@v1
    (another vocabulary) is not taken for it by pretrain or lineage; a tokens artifact read by path from another
    home names that home's tokenizer."""
    from gpt2cli.train.loop import _tokenizer_of

    here, there = tmp_path / "here", tmp_path / "there"
    for home, vocab in ((here, "300"), (there, "400")):
        assert gpt2("--home", str(home), "train-bpe", "--input", str(SAMPLE), "--vocab-size", vocab).code == 0
    theirs = there / "tokenizer" / "v1"
    made = gpt2("--home", str(here), "tokenize", "--tokenizer", str(theirs), "--input", str(SAMPLE), "--json")
    assert made.code == 0, made.err
    store = Store(here)
    tokens = store.resolve(json.loads(made.out)["ref"])
    assert tokens.inputs[0] == {**tokens.inputs[0], "ref": "tokenizer@v1", "home": str(there)}
    assert _tokenizer_of(store, tokens).path == theirs
    assert store.lineage(tokens)["inputs"][0]["path"] == str(theirs)
    assert "tokenizer@v1" not in store.dependents_closure([tokens])  # this home's tokenizer@v1 is not its input
    assert gpt2("--home", str(there), "tokenize", "--input", str(SAMPLE)).code == 0
    from_there = store.resolve(str(there / "tokens" / "v1"))
    assert from_there.foreign and _tokenizer_of(store, from_there).path == theirs


def test_shard_dtype_and_header(tmp_path: Path):
    assert dtype_for(50257) == np.uint16 and dtype_for(65536) == np.uint16 and dtype_for(65537) == np.uint32
    for vocab, dtype in ((50257, np.uint16), (100_000, np.uint32)):
        path = tmp_path / f"{vocab}.bin"
        writer = _ShardWriter(path, vocab, 0)
        writer.write(np.array([0, 1, vocab - 1]))
        writer.finish()
        shard = TokenShard.open(path)
        assert shard.dtype == dtype and shard.tokens().tolist() == [0, 1, vocab - 1]
        assert path.stat().st_size == HEADER.size + 3 * np.dtype(dtype).itemsize
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(Gpt2Error, match="header promises"):
        TokenShard.open(path)
    (tmp_path / "junk.bin").write_bytes(b"x" * 64)
    with pytest.raises(Gpt2Error, match="not a gpt2cli token shard"):
        TokenShard.open(tmp_path / "junk.bin")


def test_empty_corpus_is_an_error(gpt2, tokenizer_ref: str, tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\nnot json\n{"title": "no text"}\n')
    result = gpt2("tokenize", "--input", str(empty))
    assert result.code == 1 and "corpus is empty: no documents to tokenize (2 malformed, 1 empty records)" in result.err


def test_a_negative_zero_is_zero(gpt2, tokenizer_ref: str):
    first = json.loads(gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "0", "--json").out)
    again = json.loads(gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "-0", "--json").out)
    assert again["reused"] and again["ref"] == first["ref"]


def test_an_empty_validation_split_is_warned_about(gpt2, tokenizer_ref: str, home: Path):
    """The sample's 40 documents at the default --val-fraction 0.01 hold none out: said once, with the way to
    get a validation split; the tokens are still written (training needs only the train split)."""
    result = gpt2("tokenize", "--input", str(SAMPLE), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["summary"]["val_documents"] == 0
    warnings = [line for line in result.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.err
    assert "tokens@v1 has no validation split (0 of 40 documents)" in warnings[0]
    assert "--val-fraction 0.01, so fewer than about 100 documents (1/fraction) often give none" in warnings[0]
    assert "computes no validation loss; raise --val-fraction" in warnings[0]
    zero = gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "0")
    assert zero.code == 0 and "tokens@v2 has no validation split" in zero.err and "--val-fraction is 0" in zero.err
    held_out = gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "0.2")
    assert held_out.code == 0 and "WARNING" not in held_out.err, held_out.err


def test_tokenize_resumes_after_kill_9(gpt2, tokenizer_ref: str, home: Path, tmp_path: Path):
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        for i in range(6000):
            f.write(json.dumps({"text": f"{i}: " + texts[i % len(texts)]}) + "\n")
    args = ["tokenize", "--input", str(big), "--batch-docs", "20", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", *args],
        env={**os.environ, "GPT2_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not list((home / "tokens").glob(".partial-*/.work/state.json")):
        assert time.time() < deadline and proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (home / "tokens" / "v1").exists()
    (state,) = (home / "tokens").glob(".partial-*/.work/state.json")
    done = sum(json.loads(state.read_text())["documents"].values())
    assert 0 < done < 6000
    resumed = gpt2(*args)
    assert resumed.code == 0, resumed.err
    assert "resuming after" in resumed.err
    first = json.loads(resumed.out)
    # an uninterrupted run from scratch gives byte-identical shards
    fresh = gpt2(*args, "--force")
    second = json.loads(fresh.out)
    assert second["ref"] == "tokens@v2"
    for name in ("train.bin", "val.bin"):
        assert (Path(first["path"]) / name).read_bytes() == (Path(second["path"]) / name).read_bytes()
    assert first["summary"] == second["summary"]
    assert first["summary"]["train_documents"] + first["summary"]["val_documents"] == 6000


@pytest.mark.parametrize(("first", "then"), [(7, 3), (3, 7)])
def test_tokenize_resumes_with_another_batch_size(
    gpt2, tokenizer_ref: str, monkeypatch: pytest.MonkeyPatch, first: int, then: int
):
    """The checkpoint counts documents: a run interrupted at one --batch-docs resumes exactly at another."""
    args = ["tokenize", "--input", str(SAMPLE), "--val-fraction", "0.2", "--json"]
    real_write = shards.write_atomic
    checkpoints = []

    def interrupt_at_the_fourth_checkpoint(path: Path, data: bytes) -> None:
        checkpoints.append(path)
        if len(checkpoints) == 4:  # the fourth batch is in the shards but not in the checkpoint
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(shards, "write_atomic", interrupt_at_the_fourth_checkpoint)
    interrupted = gpt2(*args, "--batch-docs", str(first))
    assert interrupted.code == 130 and interrupted.err.endswith("gpt2: interrupted\n"), interrupted.err
    monkeypatch.setattr(shards, "write_atomic", real_write)
    resumed = gpt2(*args, "--batch-docs", str(then))
    assert resumed.code == 0, resumed.err
    clean = gpt2(*args, "--batch-docs", str(then), "--force")
    first_out, clean_out = json.loads(resumed.out), json.loads(clean.out)
    assert clean_out["ref"] == "tokens@v2"
    for name in ("train.bin", "val.bin"):
        assert (Path(first_out["path"]) / name).read_bytes() == (Path(clean_out["path"]) / name).read_bytes()
    assert first_out["summary"] == clean_out["summary"]
    assert first_out["summary"]["train_documents"] + first_out["summary"]["val_documents"] == 40
    assert f"resuming after {3 * first} documents" in resumed.err


@pytest.mark.parametrize(
    ("args", "wrong", "needs"),
    [
        (["tokenize", "--tokenizer", "model@v1", "--input", str(SAMPLE)], "model@v1 is a 'model'", "--tokenizer"),
        (["tokenize", "--corpus", "tokens@v1"], "tokens@v1 is a 'tokens'", "--corpus needs a 'corpus'"),
        (["train-bpe", "--corpus", "tokenizer@v1"], "tokenizer@v1 is a 'tokenizer'", "--corpus needs a 'corpus'"),
    ],
)
def test_stages_refuse_another_stages_artifact(gpt2, store: Store, args: list[str], wrong: str, needs: str):
    """An artifact of the wrong kind is a usage error that names its kind, never a complaint about its files."""
    for kind in ("tokenizer", "tokens", "model"):
        store.produce(kind, params={}, inputs=[], build=lambda draft: {})
    result = gpt2(*args)
    assert result.code == 2 and result.err.startswith("gpt2: error: ") and len(result.err.splitlines()) == 1
    assert wrong in result.err and needs in result.err


@pytest.mark.parametrize("value", ["0", "-5", "10000001", "9223372036854775808"])
def test_tokenize_refuses_batch_docs_out_of_range(gpt2, value: str):
    result = gpt2("tokenize", "--input", str(SAMPLE), "--batch-docs", value)
    assert result.code == 2 and result.err.startswith("gpt2: error: ") and len(result.err.splitlines()) == 1
    assert "--batch-docs" in result.err


def test_stages_read_a_corpus_artifact_and_its_split(gpt2, store: Store):
    """A `corpus` artifact (Parquet with text and split columns) feeds train-bpe and tokenize by reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    splits = ["val" if i % 10 == 0 else "train" for i in range(len(texts))]

    def build(draft):
        pq.write_table(pa.table({"text": texts, "split": splits}), draft.dir / "documents-00000.parquet")
        return {"documents": len(texts)}

    corpus = store.produce("corpus", params={}, inputs=[], build=build).artifact
    assert gpt2("train-bpe", "--vocab-size", "500").code == 0  # the latest corpus by default
    result = gpt2("tokenize", "--corpus", corpus.ref, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert summary["val_documents"] == 4 and summary["train_documents"] == 36
    assert "no validation split" not in result.err  # the corpus's own split, whatever --val-fraction says
    tokens = store.resolve("tokens")
    assert [i["ref"] for i in tokens.inputs] == ["tokenizer@v1", "corpus@v1"]
    assert store.resolve("tokenizer").inputs[0]["ref"] == "corpus@v1"
    # a corpus without `val` documents: the warning says where a split comes from; --val-fraction, which would not
    # move them, is refused rather than recorded in a manifest it has no effect on
    splits = ["train"] * len(texts)
    train_only = store.produce("corpus", params={"train_only": True}, inputs=[], build=build).artifact
    for stage in ("tokenize", "train-bpe"):
        refused = gpt2(stage, "--corpus", train_only.ref, "--val-fraction", "0.5")
        assert refused.code == 2 and "--val-fraction splits --input documents; a corpus keeps" in refused.err
    assert len(store.versions("tokens")) == 1
    result = gpt2("tokenize", "--corpus", train_only.ref, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["summary"]["val_documents"] == 0
    assert "tokens@v2 has no validation split (0 of 40 documents): corpus@v2 has no `val` documents" in result.err
    assert "rebuild the corpus with a larger `dedupe --val-fraction`" in result.err


def test_input_typed_on_the_command_line_beats_the_run_configs_corpus(gpt2, tokenizer_ref: str, tmp_path: Path):
    """The run config's ``corpus = "corpus"`` is a default: a typed --input wins over it (and a typed --corpus over
    the run config's input); both typed is still a usage error."""
    config = tmp_path / "run.toml"
    config.write_text('[train-bpe]\ncorpus = "corpus"\n\n[tokenize]\ncorpus = "corpus"\n')
    for args in (["train-bpe", "--vocab-size", "600"], ["tokenize"]):
        result = gpt2("--run-config", str(config), *args, "--input", str(SAMPLE), "--json")
        assert result.code == 0, result.err
        if args[0] == "train-bpe":
            assert json.loads(result.out)["ref"] == tokenizer_ref  # the same input as the fixture's: reused
        both = gpt2("--run-config", str(config), *args, "--input", str(SAMPLE), "--corpus", "corpus")
        assert both.code == 2 and both.err == "gpt2: error: give either --corpus or --input, not both\n"
    config.write_text(f"[tokenize]\ninput = [{json.dumps(str(SAMPLE))}]\n")
    typed_corpus = gpt2("--run-config", str(config), "tokenize", "--corpus", "corpus")
    assert typed_corpus.code == 2 and typed_corpus.err.startswith("gpt2: error: no 'corpus' artifact in ")


def test_a_reverted_setting_flows_on_with_the_version_it_reuses(gpt2, store: Store):
    """train-bpe with a vocabulary size, another, then the first again (a reverted run config): the third run
    reuses tokenizer@v1, and tokenize, reading the bare `tokenizer`, uses it too (tokens@v1), not the newest."""
    refs = []
    for vocab in ("300", "320", "300"):
        assert gpt2("train-bpe", "--input", str(SAMPLE), "--vocab-size", vocab).code == 0
        result = gpt2("tokenize", "--input", str(SAMPLE), "--json")
        assert result.code == 0, result.err
        refs.append((json.loads(result.out)["ref"], json.loads(result.out)["reused"]))
    assert refs == [("tokens@v1", False), ("tokens@v2", False), ("tokens@v1", True)]
    assert store.resolve("tokenizer").ref == "tokenizer@v1" and store.resolve("tokenizer@latest").ref == "tokenizer@v2"
    listed = {r["ref"]: r["current"] for r in json.loads(gpt2("artifacts", "ls", "tokens", "--json").out)}
    assert listed == {"tokens@v1": True, "tokens@v2": False}
