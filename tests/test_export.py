from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpt2cli import export
from gpt2cli.artifacts import Store
from gpt2cli.bpe import Tokenizer
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.model import GPT, GPTConfig

SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "articles"


# `export --force MODEL OUT` in a child process that stops at STAGE until it reads a line (or is killed there):
# "build" with the new export written but not in place, "swap" with the old export moved aside, the new not in.
STALLED_EXPORT = """
import os, sys
from pathlib import Path
from gpt2cli import export
from gpt2cli.artifacts import Artifact

model, out, stage = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3]
fsync_tree, rename = export._fsync_tree, os.rename

def stall():
    print("stalled", flush=True)
    sys.stdin.readline()

def stall_after_fsync(directory):
    fsync_tree(directory)
    stall()

def stall_after_moving_out(src, dst):
    rename(src, dst)
    if Path(src) == out:
        stall()

if stage == "build":
    export._fsync_tree = stall_after_fsync
else:
    os.rename = stall_after_moving_out
export.export_hf(Artifact.open(model), out, overwrite=True)
"""


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


@pytest.fixture
def stalled_export(store: Store, model_ref: str) -> Iterator[Callable[[Path, str], subprocess.Popen[str]]]:
    """Start STALLED_EXPORT of the model to an --out; returns once the child has stopped at the stage asked."""
    model = store.resolve(model_ref).path
    src = str(Path(export.__file__).parents[1])  # the child imports this checkout's gpt2cli
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    children: list[subprocess.Popen[str]] = []

    def start(out: Path, stage: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", STALLED_EXPORT, str(model), str(out), stage],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(child)
        assert child.stdout is not None and child.stdout.readline() == "stalled\n", child.communicate()[1]
        return child

    yield start
    for child in children:
        child.kill()
        child.communicate()


def killed(child: subprocess.Popen[str]) -> None:
    """kill -9: no finally block runs, only the kernel releases what the process held."""
    child.kill()
    child.wait()


def hidden_next_to(out: Path) -> set[str]:
    return {p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")}


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
        if Path(dst) == out and Path(src).name == "new":  # the new export's rename, not the old one's return
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


@pytest.mark.parametrize("stage", ["build", "swap"])
def test_export_removes_what_a_killed_export_left(
    gpt2, model_ref: str, tmp_path: Path, stalled_export: Callable[[Path, str], subprocess.Popen[str]], stage: str
):
    """A kill -9 leaves the hidden directory with a copy of the weights (mid-swap the old export too): the next
    export to the same --out removes it and says so."""
    out = tmp_path / "hf"
    assert gpt2("export", model_ref, "--out", str(out)).code == 0
    killed(stalled_export(out, stage))
    left = hidden_next_to(out)
    assert left and all(any((tmp_path / name).rglob("model.safetensors")) for name in left)
    result = gpt2("export", model_ref, "--out", str(out), "--force")
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "home"]
    assert all(f"removing {tmp_path / name}, left by an interrupted export" in result.err for name in left)
    GPT.load(out)


def test_export_spares_the_work_of_an_export_still_running(
    gpt2, model_ref: str, tmp_path: Path, stalled_export: Callable[[Path, str], subprocess.Popen[str]]
):
    """Two exports to the same --out at once: the second removes a dead export's leftover but not the running
    export's directory, and both complete."""
    out = tmp_path / "hf"
    running = stalled_export(out, "build")
    (live,) = hidden_next_to(out)
    live_files = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in (tmp_path / live).rglob("*"))
    dead = f".hf.{running.pid + 1}-0a1b2c3d.tmp"  # a killed export's, as the test above makes: its lock is free
    shutil.copytree(tmp_path / live, tmp_path / dead)
    result = gpt2("export", model_ref, "--out", str(out), "--force")
    assert result.code == 0, result.err
    assert hidden_next_to(out) == {live} and f"removing {tmp_path / dead}," in result.err
    assert sorted((p.relative_to(tmp_path), p.stat().st_size) for p in (tmp_path / live).rglob("*")) == live_files
    _, err = running.communicate("go on\n", timeout=60)
    assert running.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "home"]
    GPT.load(out)


def test_export_leaves_other_hidden_directories_alone(gpt2, model_ref: str, tmp_path: Path):
    """Only names of the work directories of exports to this --out are removed, and only directories: a
    lookalike, another --out's, or an older gpt2's (no lock: it may still be running) stays."""
    out = tmp_path / "hf"
    lookalikes = [".hf", ".hf.tmp", ".hf.0a1b2c3d.tmp", ".hf.0a1b2c3d.old", ".hf.12-0a1b2c3.tmp", ".hf.x-0a1b2c3d.tmp",
                  ".hf.12-0A1B2C3D.tmp", ".hf.12-0a1b2c3d.tmp.keep", ".hf.12-0a1b2c3d.tmpx", "hf.12-0a1b2c3d.tmp",
                  ".hf2.12-0a1b2c3d.tmp", ".h.12-0a1b2c3d.tmp", ".other.12-0a1b2c3d.tmp"]  # fmt: skip
    for name in lookalikes:
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(name)
    (tmp_path / ".hf.13-0a1b2c3d.tmp").write_text("a file, not a directory")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("behind a symlink")
    (tmp_path / ".hf.14-0a1b2c3d.tmp").symlink_to(tmp_path / "target")
    dead = tmp_path / ".hf.15-0a1b2c3d.tmp"  # what a killed export leaves: nobody holds its lock
    (dead / "new").mkdir(parents=True)
    (dead / "new" / "model.safetensors").write_bytes(b"weights")
    result = gpt2("export", model_ref, "--out", str(out))
    assert result.code == 0, result.err
    assert not dead.exists() and result.err.count("removing ") == 1
    assert all((tmp_path / name / "keep.txt").read_text() == name for name in lookalikes)
    assert (tmp_path / ".hf.13-0a1b2c3d.tmp").read_text() == "a file, not a directory"
    assert (tmp_path / ".hf.14-0a1b2c3d.tmp").is_symlink()
    assert (tmp_path / "target" / "keep.txt").read_text() == "behind a symlink"
