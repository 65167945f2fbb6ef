from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gpt2cli import export
from gpt2cli.artifacts import Store
from gpt2cli.bpe import Tokenizer
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.model import GPT, GPTConfig

SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "articles"


@pytest.fixture
def model_ref(store: Store) -> str:
    """A model artifact of a few thousand weights and a 40-merge tokenizer: built in well under a second."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))[:3]]
    tokenizer = Tokenizer.from_merges(learn_merges(count_corpus(texts, workers=1), 40))

    def build(draft) -> dict[str, int]:
        GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, n_ctx=16, vocab_size=tokenizer.vocab_size)).save(draft.dir)
        tokenizer.save(draft.dir)
        return {}

    return store.produce("model", params={}, inputs=[], build=build).artifact.ref


def one_line_usage_error(result) -> bool:
    return result.code == 2 and result.err.startswith("gpt2: error: ") and len(result.err.splitlines()) == 1


def test_export_never_writes_into_the_artifact_home_or_the_source(gpt2, store: Store, model_ref: str, tmp_path: Path):
    """--force replaces --out: an --out overlapping a published version or the home would destroy artifacts."""
    version_dir = store.resolve(model_ref).path
    loose = tmp_path / "loose-model"  # the same model, as a directory outside any home
    shutil.copytree(version_dir, loose)
    for model, out in [
        (model_ref, version_dir),
        (model_ref, version_dir / "hf"),
        (model_ref, version_dir.parent),
        (model_ref, store.home),
        (model_ref, store.home / "tokens" / "v9"),
        (model_ref, tmp_path),  # holds the home
        (str(loose), loose),
        (str(loose), loose / "hf"),
    ]:
        result = gpt2("export", model, "--out", str(out), "--force")
        assert one_line_usage_error(result), (out, result)
        assert "overlaps" in result.err
    assert store.resolve(model_ref).verify() == [] and [a.ref for a in store.all()] == [model_ref]
    assert sorted(p.name for p in loose.iterdir()) == sorted(p.name for p in version_dir.iterdir())


def test_export_bad_out_is_a_one_line_error(gpt2, model_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for force in ([], ["--force"]):
        not_dir = gpt2("export", model_ref, "--out", str(afile), *force)
        assert one_line_usage_error(not_dir) and "is not a directory" in not_dir.err
        assert afile.read_text() == "not a directory"
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "notes/.."):
        for force in ([], ["--force"]):
            here = gpt2("export", model_ref, "--out", out, *force)
            assert one_line_usage_error(here) and "current directory" in here.err
    assert [p.name for p in work.iterdir()] == ["notes"]


def test_export_force_replaces_the_old_export_whole_or_not_at_all(
    gpt2, model_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "hf"
    assert gpt2("export", model_ref, "--out", str(out)).code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("the user's own file, replaced only by a complete export")
    real_rename = os.rename

    def crash_on_the_final_rename(src: Path, dst: Path) -> None:
        if Path(dst) == out and Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(export.os, "rename", crash_on_the_final_rename)
    failed = gpt2("export", model_ref, "--out", str(out), "--force")
    assert failed.code == 1 and failed.err.startswith("gpt2: error: ") and len(failed.err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "notes.txt"} == before
    assert (out / "notes.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf", "home"]
    monkeypatch.setattr(export.os, "rename", real_rename)
    assert gpt2("export", model_ref, "--out", str(out), "--force").code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "home"]
    GPT.load(out)


def test_export_names_the_kind_of_a_wrong_artifact(gpt2, store: Store):
    """The same wording as the stages' (`--corpus needs a 'corpus' artifact`)."""
    store.produce("tokens", params={}, inputs=[], build=lambda draft: {})
    result = gpt2("export", "tokens@v1")
    assert one_line_usage_error(result) and "tokens@v1 is a 'tokens' artifact; export needs a 'model'" in result.err
