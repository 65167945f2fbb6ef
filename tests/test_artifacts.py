from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpt2cli.artifacts import Store, artifact_input, file_input
from gpt2cli.errors import Gpt2Error, LockHeld, UsageError

WORKER = Path(__file__).with_name("store_worker.py")


def write_files(**files: str):
    def build(draft):
        for name, text in files.items():
            path = draft.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return {"documents": len(files)}

    return build


def worker(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_publish_writes_manifest_with_checksums(store: Store):
    result = store.produce(
        "corpus", params={"min_words": 5}, inputs=[], build=write_files(**{"a.txt": "hello", "sub/b.txt": "world"})
    )
    art = result.artifact
    assert not result.reused
    assert art.ref == "corpus@v1" and art.path == store.home / "corpus" / "v1"
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["kind"] == "corpus" and m["version"] == "v1"
    assert m["params"] == {"min_words": 5}
    assert m["summary"] == {"documents": 2}
    assert m["created_at"].endswith("Z") and m["gpt2cli_version"]
    assert m["command"].startswith("gpt2")
    assert {f["path"]: f["sha256"] for f in m["files"]} == {
        "a.txt": hashlib.sha256(b"hello").hexdigest(),
        "sub/b.txt": hashlib.sha256(b"world").hexdigest(),
    }
    assert art.size_bytes == 10
    assert art.verify() == []
    assert not list((store.home / "corpus").glob(".partial-*"))


def test_inputs_record_ref_and_manifest_hash(store: Store, tmp_path: Path):
    raw = tmp_path / "links.txt"
    raw.write_text("https://example.com\n")
    corpus = store.produce("corpus", params={}, inputs=[file_input(raw)], build=write_files(x="1")).artifact
    tok = store.produce("tokenizer", params={}, inputs=[artifact_input(corpus)], build=write_files(y="2")).artifact
    (entry,) = tok.inputs
    assert entry == {
        "ref": "corpus@v1",
        "manifest_sha256": hashlib.sha256((corpus.path / "manifest.json").read_bytes()).hexdigest(),
    }
    assert corpus.inputs[0]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    tree = store.lineage(tok)
    assert tree["ref"] == "tokenizer@v1"
    assert tree["inputs"][0]["ref"] == "corpus@v1"
    assert tree["inputs"][0]["inputs"][0]["file"] == str(raw.resolve())


def test_reuse_same_params_and_inputs(store: Store, tmp_path: Path):
    calls = []

    def build(draft):
        calls.append(1)
        (draft.dir / "f").write_text("x")

    first = store.produce("corpus", params={"k": 1}, inputs=[], build=build)
    again = store.produce("corpus", params={"k": 1}, inputs=[], build=build)
    assert again.reused and again.artifact.ref == "corpus@v1" and len(calls) == 1
    other = store.produce("corpus", params={"k": 2}, inputs=[], build=build)
    assert not other.reused and other.artifact.ref == "corpus@v2"
    forced = store.produce("corpus", params={"k": 1}, inputs=[], build=build, force=True)
    assert forced.artifact.ref == "corpus@v3" and len(calls) == 3
    # a changed input file is a different build
    src = tmp_path / "in.txt"
    src.write_text("one")
    a = store.produce("corpus", params={"k": 1}, inputs=[file_input(src)], build=build)
    src.write_text("two")
    b = store.produce("corpus", params={"k": 1}, inputs=[file_input(src)], build=build)
    assert a.artifact.ref != b.artifact.ref and not b.reused
    assert first.artifact.ref == "corpus@v1"


def test_damaged_version_is_not_reused(store: Store):
    art = store.produce("corpus", params={}, inputs=[], build=write_files(f="content")).artifact
    (art.path / "f").write_text("cut")
    again = store.produce("corpus", params={}, inputs=[], build=write_files(f="content"))
    assert not again.reused and again.artifact.ref == "corpus@v2"


def test_resolve_references(store: Store, tmp_path: Path):
    for i in range(3):
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i)))
    assert store.resolve("corpus").ref == "corpus@v3"
    assert store.resolve("corpus@latest").ref == "corpus@v3"
    assert store.resolve("corpus@v2").ref == "corpus@v2"
    assert store.resolve(str(store.home / "corpus" / "v1")).ref == "corpus@v1"
    assert store.resolve(store.home / "corpus" / "v1").ref == "corpus@v1"
    with pytest.raises(UsageError, match=r"no corpus@v9 .*corpus versions: v1, v2, v3"):
        store.resolve("corpus@v9")
    with pytest.raises(UsageError, match=r"run `gpt2 train-bpe`"):
        store.resolve("tokenizer")
    with pytest.raises(UsageError, match="bad reference"):
        store.resolve("Corpus@3")
    with pytest.raises(UsageError, match="no artifact directory"):
        store.resolve(str(tmp_path / "nowhere"))


def test_unparsable_manifest_names_the_file(store: Store):
    art = store.produce("corpus", params={}, inputs=[], build=write_files(f="x")).artifact
    (art.path / "manifest.json").write_text("{not json")
    with pytest.raises(Gpt2Error, match=r"manifest .*corpus/v1/manifest.json does not parse"):
        store.resolve("corpus")


def rewrite_manifest(directory: Path, **fields: object) -> None:
    """Edit a manifest by hand, as a user might."""
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


SHA = "0" * 64


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("inputs", [{"ref": "raw-docs@v1", "manifest_sha256": SHA, "path": "p"}], "inputs[0] is not an artifact or a"),
        ("inputs", [{"path": "/x", "bytes": 1, "sha256": SHA}, {"ref": "/etc", "manifest_sha256": SHA}], "inputs[1]"),
        ("retains", [{"ref": "raw-docs@v1", "manifest_sha256": "x"}], "retains[0] is not an artifact"),
        ("files", [{"path": "f", "bytes": 10**400, "sha256": SHA}], "files[0] is not a file of the version"),
        ("files", [{"path": "f", "bytes": True, "sha256": SHA}], "files[0]"),
        ("files", [{"path": "f", "bytes": -1, "sha256": SHA}], "files[0]"),
        ("files", [{"path": "", "bytes": 1, "sha256": SHA}], "files[0]"),
        ("files", [{"path": "../f", "bytes": 1, "sha256": SHA}], "files[0]"),
        ("files", [{"path": "manifest.json", "bytes": 1, "sha256": SHA}], "files[0]"),
        ("version", "v1\n", "version 'v1\\n'"),
    ],
)
def test_a_manifest_entry_no_stage_writes_is_damaged(store: Store, field: str, value: object, problem: str):
    """Readers trust what the shape check passed: an input that is both an artifact and a file, a size no file
    has, a file outside the version would each be a traceback further on."""
    art = store.produce("corpus", params={}, inputs=[], build=write_files(f="x")).artifact
    rewrite_manifest(art.path, **{field: value})
    with pytest.raises(Gpt2Error, match=rf"corpus/v1/manifest.json is damaged: {re.escape(problem)}"):
        store.resolve("corpus@v1")


def test_lineage_reads_each_version_once_and_marks_a_cycle(store: Store, monkeypatch: pytest.MonkeyPatch):
    corpus = store.produce("corpus", params={}, inputs=[], build=write_files(f="x")).artifact
    tokenizer = store.produce("tokenizer", params={}, inputs=[artifact_input(corpus)], build=write_files(t="x"))
    tokens = store.produce("tokens", params={}, inputs=[artifact_input(tokenizer.artifact), artifact_input(corpus)],
                           build=write_files(s="x")).artifact  # fmt: skip
    resolved = []
    monkeypatch.setattr(store, "resolve", lambda ref, *kind: resolved.append(ref) or Store.resolve(store, ref, *kind))
    tree = store.lineage(tokens)
    assert [i["ref"] for i in tree["inputs"]] == ["tokenizer@v1", "corpus@v1"]
    assert tree["inputs"][0]["inputs"] == [tree["inputs"][1]] and sorted(resolved) == ["corpus@v1", "tokenizer@v1"]
    # by hand: the corpus built from the tokenizer built from it, and retaining itself
    rewrite_manifest(corpus.path, inputs=[artifact_input(tokenizer.artifact)], retains=[artifact_input(corpus)])
    tree = store.lineage(store.resolve("tokenizer"))
    (node,) = tree["inputs"]
    assert node["ref"] == "corpus@v1" and node["status"] == "changed since use"
    assert [(i["ref"], i["status"]) for i in node["inputs"]] == [("tokenizer@v1", "cycle"), ("corpus@v1", "cycle")]


def test_verify_names_changed_truncated_missing_and_extra_files(store: Store):
    art = store.produce(
        "corpus", params={}, inputs=[], build=write_files(a="aaaa", b="bbbb", c="cccc", d="dddd")
    ).artifact
    (art.path / "a").write_text("aaab")  # same size, different bytes
    (art.path / "b").write_text("bb")
    (art.path / "c").unlink()
    (art.path / "e").write_text("stray")
    problems = art.verify()
    assert problems == [
        "a: changed (sha256 differs from the manifest)",
        "b: truncated (2 of 4 bytes)",
        "c: missing",
        "e: not in the manifest",
    ]


def test_a_file_that_cannot_be_read_is_that_files_problem(store: Store):
    art = store.produce("corpus", params={}, inputs=[], build=write_files(a="a", b="b")).artifact
    (art.path / "a").unlink()
    (art.path / "a").mkdir()  # of the size the manifest says
    size = (art.path / "a").stat().st_size
    rewrite_manifest(art.path, files=[{**f, "bytes": size} if f["path"] == "a" else f for f in art.manifest["files"]])
    assert store.resolve("corpus").verify() == ["a: cannot be read (Is a directory)"]


def test_version_names_are_never_reused(store: Store):
    store.produce("corpus", params={"i": 1}, inputs=[], build=write_files(f="1"))
    v2 = store.produce("corpus", params={"i": 2}, inputs=[], build=write_files(f="2")).artifact
    store.remove(v2)
    v3 = store.produce("corpus", params={"i": 3}, inputs=[], build=write_files(f="3")).artifact
    assert v3.ref == "corpus@v3"


def test_failed_build_publishes_nothing(store: Store):
    def build(draft):
        (draft.dir / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.produce("corpus", params={}, inputs=[], build=build)
    assert store.versions("corpus") == []
    assert not list((store.home / "corpus").glob(".partial-*"))  # nothing to resume: no draft left
    store.produce("corpus", params={}, inputs=[], build=write_files(f="ok"))
    assert [a.ref for a in store.versions("corpus")] == ["corpus@v1"]
    assert not list((store.home / "corpus").glob(".partial-*"))


@pytest.mark.parametrize("resumable", [False, True])
def test_an_input_replaced_while_the_build_reads_it_is_not_published(store: Store, tmp_path: Path, resumable: bool):
    """The manifest would name the old bytes while the files hold the new ones, and a rerun on the old bytes would
    reuse (or resume) the mix: no version, and no draft either."""
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "old"}\n')
    inputs = [file_input(source)]

    def build(draft):
        (draft.dir / "read").write_text(source.read_text())
        replacement = tmp_path / "new.jsonl"
        replacement.write_text('{"text": "new"}\n')
        replacement.replace(source)  # what a well-behaved writer does, while the stage reads
        return {}

    with pytest.raises(Gpt2Error, match=rf"input {re.escape(str(source))} changed while corpus read it"):
        store.produce("corpus", params={}, inputs=inputs, build=build, resumable=resumable)
    assert store.versions("corpus") == [] and not list((store.home / "corpus").glob(".partial-*"))
    published = store.produce("corpus", params={}, inputs=[file_input(source)], build=write_files(f="ok"))
    assert published.artifact.ref == "corpus@v1"  # unchanged inputs publish


def test_inputs_the_build_is_done_reading_may_change_while_it_goes_on(store: Store, tmp_path: Path):
    """An eval reads its data, then scores for hours while another run rewrites a cached file: what it read is
    what its manifest names. Rewritten before the build says it is done reading: not published."""
    source = tmp_path / "ptb.test.txt"
    source.write_text("the cat\n")
    directory = {"path": str(tmp_path / "model-dir"), "directory": True, "bytes": 0, "sha256": SHA}  # an eval's model

    def build(read_first: bool):
        def run(draft):
            if read_first:
                draft.inputs_read()
            source.write_text("the dog\n")
            return {}

        return run

    inputs = [file_input(source), directory]
    with pytest.raises(Gpt2Error, match="changed while eval read it"):
        store.produce("eval", params={}, inputs=inputs, build=build(read_first=False))
    source.write_text("the cat\n")
    published = store.produce("eval", params={}, inputs=[file_input(source), directory], build=build(read_first=True))
    assert published.artifact.ref == "eval@v1"


def test_an_artifact_of_another_home_is_recorded_with_that_home(tmp_path: Path):
    """A model trained in home B on home A's tokens names A's tokenizer with A's home: B's tokenizer@v1 is
    another one, and neither verify, lineage nor gc may take it for the one used."""
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    theirs = a.produce("tokenizer", params={"v": 1}, inputs=[], build=write_files(t="a")).artifact
    tokens = a.produce("tokens", params={}, inputs=[artifact_input(theirs)], build=write_files(t="1")).artifact
    b.produce("tokenizer", params={"v": 2}, inputs=[], build=write_files(t="b"))
    read_by_path = b.open(tokens.path)  # `pretrain --tokens /a/tokens/v1` in home b
    recorded = b.recorded(read_by_path, read_by_path.inputs[0])
    assert recorded.path == theirs.path and artifact_input(recorded)["home"] == str(a.home)
    b.produce("model", params={}, inputs=[artifact_input(read_by_path), artifact_input(recorded)],
              build=write_files(w="x"))  # fmt: skip
    used = b.lineage(b.resolve("model"))["inputs"]
    assert [(i["path"], i.get("status")) for i in used] == [(str(tokens.path), None), (str(theirs.path), None)]


def test_second_writer_gets_lock_error_naming_the_holder(store: Store, home: Path, tmp_path: Path):
    marker = tmp_path / "started"
    holder = worker(home, "--files", "50", "--sleep", "0.1", "--marker", str(marker))
    try:
        wait_for(marker)
        with pytest.raises(LockHeld, match=rf"pid {holder.pid}\b"):
            store.produce("corpus", params={"param": "b"}, inputs=[], build=write_files(f="x"))
        # another kind is not blocked
        store.produce("tokenizer", params={}, inputs=[], build=write_files(f="x"))
    finally:
        holder.kill()
        holder.wait()


def test_two_processes_publishing_the_same_kind(home: Path, store: Store):
    procs = [worker(home, "--param", p, "--files", "20", "--sleep", "0.01", "--wait") for p in ("a", "b")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    versions = store.versions("corpus")
    assert sorted(a.version for a in versions) == ["v1", "v2"]
    assert sorted(a.params["param"] for a in versions) == ["a", "b"]
    for art in versions:
        assert art.verify() == [] and len(art.manifest["files"]) == 20
    # without --wait, one of two simultaneous writers exits 75 and touches nothing
    procs = [worker(home, "--param", p, "--files", "20", "--sleep", "0.05") for p in ("c", "d")]
    codes = sorted(p.wait(timeout=60) for p in procs)
    assert codes == [0, 75]
    assert len(store.versions("corpus")) == 3


def test_kill_9_mid_build_leaves_no_version_and_next_run_recovers(home: Path, store: Store, tmp_path: Path):
    marker = tmp_path / "started"
    proc = worker(home, "--files", "100", "--sleep", "0.02", "--marker", str(marker))
    wait_for(marker)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.versions("corpus") == []
    assert list((home / "corpus").glob(".partial-*")), "the killed run should leave its draft behind"
    with pytest.raises(UsageError):
        store.resolve("corpus")
    done = subprocess.run([sys.executable, str(WORKER), "--home", str(home), "--files", "5"], check=True)
    assert done.returncode == 0
    (art,) = store.versions("corpus")
    assert art.verify() == [] and len(art.manifest["files"]) == 5
    assert not list((home / "corpus").glob(".partial-*"))


def test_kill_9_at_random_moments_never_exposes_a_partial_version(home: Path, store: Store, tmp_path: Path):
    """Kill the writer at many points, publish included: a version is either complete or invisible."""
    for delay in (0.05, 0.15, 0.3, 0.45, 0.6, 0.8):
        proc = worker(home, "--param", str(delay), "--files", "40", "--sleep", "0.005")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for art in store.versions("corpus"):
            assert art.verify() == [], art.ref
            assert len(art.manifest["files"]) == 40


def test_resumable_build_continues_the_killed_draft(home: Path, store: Store, tmp_path: Path):
    marker = tmp_path / "started"
    proc = worker(home, "--files", "60", "--sleep", "0.02", "--resumable", "--marker", str(marker))
    wait_for(marker)
    time.sleep(0.4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run(
        [sys.executable, str(WORKER), "--home", str(home), "--files", "60", "--resumable", "--marker", str(marker)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert marker.read_text() == "resumed", out.stderr
    (art,) = store.versions("corpus")
    assert 0 < art.summary["files_written"] < 60
    assert len(art.manifest["files"]) == 60 and art.verify() == []


def test_a_kill_inside_write_atomic_leaves_no_file_in_the_resumed_version(store: Store, monkeypatch):
    """A kill while the manifest (or a stage's state file) is written atomically leaves its temporary file in the
    draft; the resumed build publishes without it, as an uninterrupted build would."""
    real = os.replace

    def killed_before_the_replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == "manifest.json":
            raise KeyboardInterrupt  # the temporary file is written; a kill -9 would leave it
        real(src, dst)

    def build(draft):
        (draft.dir / "data.txt").write_text("data")
        (draft.dir / "sub").mkdir(exist_ok=True)
        (draft.dir / "sub" / ".state.json.0123abcd.tmp").write_text("{")  # a stage's interrupted write_atomic
        return {}

    with monkeypatch.context() as m:
        m.setattr("gpt2cli.artifacts.os.replace", killed_before_the_replace)
        m.setattr("gpt2cli.artifacts.Path.unlink", lambda *a, **k: None)  # a kill runs no cleanup
        with pytest.raises(KeyboardInterrupt):
            store.produce("tokens", params={}, inputs=[], build=build, resumable=True)
    [draft] = (store.home / "tokens").glob(".partial-*")
    assert [p.name for p in draft.glob(".manifest.json.*.tmp")]
    art = store.produce("tokens", params={}, inputs=[], build=build, resumable=True).artifact
    assert [f["path"] for f in art.manifest["files"]] == ["data.txt"] and art.verify() == []
    assert not list(art.path.rglob("*.tmp"))


def test_gc_keeps_newest_and_their_inputs(store: Store):
    corpora = [
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i))).artifact for i in range(3)
    ]
    tok_old = store.produce("tokenizer", params={"i": 0}, inputs=[artifact_input(corpora[0])], build=write_files(t="0"))
    store.produce("tokenizer", params={"i": 1}, inputs=[artifact_input(corpora[0])], build=write_files(t="1"))
    assert [a.ref for a in store.gc(1, dry_run=True).removed] == ["corpus@v2", "tokenizer@v1"]
    assert len(store.all()) == 5  # dry run deletes nothing
    removed = store.gc(1).removed
    assert sorted(a.ref for a in removed) == ["corpus@v2", "tokenizer@v1"]
    assert sorted(a.ref for a in store.all()) == ["corpus@v1", "corpus@v3", "tokenizer@v2"]
    assert not tok_old.artifact.path.exists()
    with pytest.raises(UsageError):
        store.gc(0)


def test_gc_keeps_what_a_kept_version_retains_not_the_versions_it_continues(store: Store):
    """Hourly incremental refreshes make a chain of versions, each continuing the one before: gc must not keep
    the whole chain (disk would grow forever), only what the kept version retains (what rebuilding it reads)."""
    raw = [
        store.produce("raw-docs", params={"i": i}, inputs=[], build=write_files(f=str(i))).artifact for i in range(3)
    ]
    previous = None
    for i in range(3):
        previous = store.produce("corpus", params={"i": i}, inputs=[artifact_input(raw[i])], parent=previous,
                                 retains=[artifact_input(raw[0])], build=write_files(f=str(i))).artifact  # fmt: skip
    assert [a.ref for a in store.gc(1).removed] == ["corpus@v1", "corpus@v2", "raw-docs@v2"]
    assert store.lineage(store.resolve("corpus@v3"))["parent_status"] == "removed"
    assert store.resolve("corpus@v3").retains == [artifact_input(raw[0])]


def test_a_bare_kind_means_the_version_last_published_or_reused(store: Store, caplog: pytest.LogCaptureFixture):
    """The current version: after a reuse of an older one, that one, not the newest; gc keeps it; a pointer
    that is damaged or names a removed version falls back to the newest, with a warning."""
    for params in ({"i": 0}, {"i": 1}):
        store.produce("corpus", params=params, inputs=[], build=write_files(f=str(params["i"])))
    assert store.resolve("corpus").ref == "corpus@v2"
    again = store.produce("corpus", params={"i": 0}, inputs=[], build=write_files(f="0"))
    assert again.reused and again.artifact.ref == "corpus@v1"
    assert store.resolve("corpus").ref == "corpus@v1" and store.resolve("corpus@latest").ref == "corpus@v2"
    assert store.gc(1, dry_run=True).removed == []  # the newest and the current
    store.produce("corpus", params={"i": 2}, inputs=[], build=write_files(f="2"))
    assert [a.ref for a in store.gc(1).removed] == ["corpus@v1", "corpus@v2"]
    (store.home / "corpus" / ".current").write_text("v1\n")  # a version gc removed (by hand: gc keeps it)
    with caplog.at_level(logging.WARNING):
        assert store.resolve("corpus").ref == "corpus@v3"
    assert "not a version there" in caplog.text
    (store.home / "corpus" / ".current").write_bytes(b"\xff\xfe")
    assert store.resolve("corpus").ref == "corpus@v3"


def test_a_kill_on_either_side_of_the_publishing_rename_leaves_the_right_version_current(
    store: Store, monkeypatch: pytest.MonkeyPatch
):
    """Before the rename the new version does not exist and the current one stays current (even when it is not
    the newest); after it, the new one is current although the run died before it could say so."""
    for i in (0, 1, 0):
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i)))
    assert store.resolve("corpus").ref == "corpus@v1"  # reused, older than v2

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("gpt2cli.artifacts.os.rename", killed)
        with pytest.raises(KeyboardInterrupt):
            store.produce("corpus", params={"i": 2}, inputs=[], build=write_files(f="2"))
    assert store.resolve("corpus").ref == "corpus@v1" and store.resolve("corpus@latest").ref == "corpus@v2"
    with monkeypatch.context() as m:
        m.setattr(Store, "mark_current", killed)
        with pytest.raises(KeyboardInterrupt):
            store.produce("corpus", params={"i": 3}, inputs=[], build=write_files(f="3"))
    assert store.resolve("corpus").ref == "corpus@v3"
    again = store.produce("corpus", params={"i": 2}, inputs=[], build=write_files(f="2"))
    assert again.artifact.ref == "corpus@v4" and store.resolve("corpus").ref == "corpus@v4"
    assert (store.home / "corpus" / ".current").read_text() == "v4\n"


def test_a_reused_version_is_held_against_gc(store: Store, home: Path):
    """A stage that reuses a version outside the kind's lock (pretrain) holds it, as a read: a gc running at that
    moment spares it instead of deleting what the stage is about to hand on."""
    for i in range(2):
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i)))
    assert store.reusable("corpus", {"i": 0}, []).ref == "corpus@v1"
    gc = subprocess.run([sys.executable, "-c", f"from gpt2cli.artifacts import Store; c = Store({str(home)!r}).gc(1); "
                         "print([a.ref for a in c.removed], [a.ref for a in c.in_use])"],
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert gc.stdout.split() == ["[]", "['corpus@v1']"]


@contextlib.contextmanager
def reading(home: Path, ref: str) -> Iterator[None]:
    """A running stage that reads ``ref``: another process holds it, as every command does, until the block ends."""
    reader = subprocess.Popen(
        [sys.executable, "-c", f"from gpt2cli.artifacts import Store; Store({str(home)!r}).resolve({ref!r}); "
         "print('reading', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        yield
    finally:
        reader.kill()
        reader.wait()


def test_gc_spares_what_a_running_stage_reads(store: Store, home: Path):
    for i in range(2):
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i)))
    with reading(home, "corpus@v1"):
        collected = store.gc(1)
        assert collected.removed == [] and [a.ref for a in collected.in_use] == ["corpus@v1"]
        assert (home / "corpus" / "v1" / "f").read_text() == "0"
    assert [a.ref for a in store.gc(1).removed] == ["corpus@v1"]  # the reader is gone
    with pytest.raises(UsageError, match="no corpus@v1"):
        store.resolve("corpus@v1")


def test_what_a_version_a_running_stage_reads_needs_stays_with_it(store: Store, home: Path):
    """A version gc spares because a stage reads it keeps what it was built from and retains, as a kept one does,
    even when gc comes to those first: the model that stage publishes must not name deleted inputs."""
    raw = [store.produce("raw-docs", params={"i": i}, inputs=[], build=write_files(f=str(i))).artifact for i in (1, 2)]
    old = store.produce("corpus", params={"i": 1}, inputs=[artifact_input(raw[1])], retains=[artifact_input(raw[0])],
                        build=write_files(f="1")).artifact  # fmt: skip
    new = store.produce("corpus", params={"i": 2}, inputs=[artifact_input(raw[1])], build=write_files(f="2")).artifact
    for i, corpus in enumerate((old, new)):
        store.produce("tokenizer", params={"i": i}, inputs=[artifact_input(corpus)], build=write_files(t=str(i)))
    with reading(home, "tokenizer@v1"):
        collected = store.gc(1)
        assert collected.removed == [] and [a.ref for a in collected.in_use] == ["tokenizer@v1"]
        assert len(store.all()) == 6
        assert store.lineage(store.resolve("tokenizer@v1"))["inputs"][0]["inputs"][1]["ref"] == "raw-docs@v1"
    assert sorted(a.ref for a in store.gc(1).removed) == ["corpus@v1", "raw-docs@v1", "tokenizer@v1"]


def test_gc_deletes_nothing_while_any_stage_publishes(store: Store, home: Path, tmp_path: Path):
    for i in range(2):
        store.produce("corpus", params={"i": i}, inputs=[], build=write_files(f=str(i)))
    marker = tmp_path / "started"
    holder = worker(home, "--kind", "tokenizer", "--files", "50", "--sleep", "0.1", "--marker", str(marker))
    try:
        wait_for(marker)
        with pytest.raises(LockHeld, match="tokenizer"):
            store.gc(1)
        assert [a.ref for a in store.versions("corpus")] == ["corpus@v1", "corpus@v2"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_error_other_than_a_gc_claim_is_raised_not_waited_out(store: Store, monkeypatch: pytest.MonkeyPatch):
    """Only a gc's claim is worth waiting for; a filesystem that cannot lock at all is an error at once."""
    import errno

    from gpt2cli import artifacts

    version = store.produce("corpus", params={}, inputs=[], build=write_files(f="x")).artifact.path
    artifacts.release_reads()

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(artifacts.fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="No locks available"), artifacts.reading(version):
        pass
