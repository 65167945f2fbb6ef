from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpt2cli.artifacts import Store
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.dedupe.bloom import ngram_items
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval import hub as hub_module
from tests.conftest import SAMPLE, SHARED_DATA, CliResult, run_cli, save_model_dir, shared_data


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
    missing = run_cli(
        model_home, "eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path), "--source", "local"
    )
    assert missing.returncode == 1
    assert f"{tmp_path}/ptb/ptb.test.txt not found; get it from" in missing.stderr
    assert "(or use --source hub: ptb_text_only)" in missing.stderr
    nothing = run_cli(model_home, "eval", "zero-shot", "--data-dir", str(tmp_path))
    assert nothing.returncode == 2 and "no task has its data" in nothing.stderr
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_bytes(b" the cat\n" + b"\0" * 4096)  # a damaged copy
    nul = run_cli(model_home, "eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path), "--source", "local")
    assert nul.returncode == 1 and nul.stderr.splitlines()[-1] == (
        f"gpt2: error: cannot read {tmp_path}/ptb/ptb.test.txt: a NUL byte at offset 9 (not a text file)"
    )


def test_a_byte_order_mark_is_not_scored_and_a_cut_character_is_not_replaced(tmp_path: Path):
    """One copy of WikiText-2's test file starts with a byte-order mark: no word, no tokens. enwik8's last 5M
    bytes may start inside a character: its tail is left out, not scored as U+FFFD (3 bytes of its own)."""
    from gpt2cli.eval.files import read_text
    from gpt2cli.eval.lm import count_units
    from gpt2cli.eval.stage import _char_text

    (tmp_path / "bom.tokens").write_bytes(b"\xef\xbb\xbf = Title = \n")
    assert read_text(tmp_path / "bom.tokens") == " = Title = \n"
    assert count_units(read_text(tmp_path / "bom.tokens"), "word") == 4
    (tmp_path / "enwik8").write_bytes(b"x" * 10 + "\u00e9".encode() + b"a" * 4_999_999)
    text = _char_text(tmp_path / "enwik8", "byte", None)
    assert text == "a" * 4_999_999


def write_task_files(root: Path) -> None:
    """Small files in each dataset's original format, under the names the stage looks for."""
    words = ["the", "cat", "sat", "on", "the", "mat", "while", "a", "dog", "ran", "to", "the", "park"]  # fmt: skip
    (root / "enwik8").mkdir()
    (root / "enwik8" / "enwik8").write_bytes(("<page><title>Cat</title> " + " ".join(words) * 80).encode())
    (root / "text8").mkdir()
    (root / "text8" / "text8").write_text(" ".join(words * 100))
    (root / "1bw").mkdir()
    (root / "1bw" / "news.en.heldout-00000-of-00050").write_text(
        "The cat 's toy was n't there .\nA dog , a bird and a tree .\nThey said `` hello '' to us .\n"
    )
    (root / "cbt").mkdir()
    for kind in ("CN", "NE"):
        candidates = ["cat", "dog", "mat", "park", "bird", "tree", "toy", "hat", "sun", "cup"]
        example = [f"{i} The {candidates[i % 10]} sat on the {candidates[(i + 3) % 10]} ." for i in range(1, 21)]
        example.append("21 The XXXXX ran to the park .\tdog\t\t" + "|".join(candidates))
        (root / "cbt" / f"cbtest_{kind}_valid_2000ex.txt").write_text("\n".join(example * 1) + "\n\n")
    (root / "coqa").mkdir()
    story = {"id": "s1", "story": "The cat sat on the mat. The dog ran to the park.",
             "questions": [{"input_text": "Where did the cat sit?", "turn_id": 1},
                           {"input_text": "Who ran?", "turn_id": 2}],
             "answers": [{"input_text": "on the mat", "turn_id": 1}, {"input_text": "the dog", "turn_id": 2}],
             "additional_answers": {}}  # fmt: skip
    (root / "coqa" / "coqa-dev-v1.0.json").write_text(json.dumps({"version": "1.0", "data": [story]}))
    (root / "cnn-dm").mkdir()
    rows = [{"article": "The cat sat on the mat. " * 8, "highlights": "A cat sat.", "id": str(i)} for i in range(3)]
    (root / "cnn-dm" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "wmt14").mkdir()
    english = ["The cat sat.", "The dog ran.", "A bird sang.", "The sun rose.", "The rain fell.", "A boat sank."]
    french = ["Le chat.", "Le chien.", "Un oiseau.", "Le soleil.", "La pluie.", "Un bateau."]  # 5 shots + 1
    (root / "wmt14" / "newstest2014.en").write_text("".join(f"{line}\n" for line in english))
    (root / "wmt14" / "newstest2014.fr").write_text("".join(f"{line}\n" for line in french))
    (root / "nq-open").mkdir()
    qa = [{"question": f"who sat on mat {i}", "answer": ["the cat"]} for i in range(10)]
    (root / "nq-open" / "NQ-open.dev.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))


def test_every_task_of_table3_and_section3_runs_from_local_files(model_home: Path, tmp_path: Path):
    write_task_files(tmp_path)
    tasks = ["enwik8", "text8", "1bw", "cbt-cn", "cbt-ne", "coqa", "cnn-dm", "wmt14-en-fr", "wmt14-fr-en", "nq-open"]
    result = run_cli(model_home, "eval", "zero-shot", *(a for t in tasks for a in ("--task", t)), "--limit", "3",
                     "--data-dir", str(tmp_path), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(Store(model_home).resolve("eval").file("metrics.json").read_text())["results"]
    assert set(metrics) == set(tasks)
    assert metrics["enwik8"]["bytes"] == 3000 and 0 < metrics["enwik8"]["bits_per_byte"] < 20
    assert metrics["text8"]["chars"] == 3000 and 0 < metrics["text8"]["bits_per_char"] < 20
    window = metrics["enwik8"]["window"]  # how a text longer than the context was scored, recorded
    assert window["stride"] == window["context"] // 2 and "predicted once" in window["rule"]
    assert metrics["1bw"]["words"] == 9 + 10 + 9 and metrics["1bw"]["ppl"] > 1
    assert all(0 <= metrics[t]["acc"] <= 100 and metrics[t]["examples"] == 1 for t in ("cbt-cn", "cbt-ne"))
    assert metrics["coqa"]["examples"] == 2 and 0 <= metrics["coqa"]["f1"] <= 100
    assert metrics["cnn-dm"]["examples"] == 3 and {"rouge1", "rouge2", "rougeL"} <= set(metrics["cnn-dm"])
    assert metrics["wmt14-en-fr"]["examples"] == 3 and metrics["wmt14-fr-en"]["bleu"] >= 0
    assert metrics["nq-open"]["examples"] == 3 and 0 <= metrics["nq-open"]["exact_match"] <= 100
    (tmp_path / "wmt14" / "newstest2014.fr").unlink()
    missing = run_cli(model_home, "eval", "zero-shot", "--task", "wmt14-en-fr", "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "newstest2014.fr not found" in missing.stderr


def test_winograd_from_the_real_collection(model_home: Path):
    shared_data("winograd", "WSCollection.xml")
    result = run_cli(model_home, "eval", "zero-shot", "--task", "wsc273", "--limit", "20", "--data-dir",
                     str(SHARED_DATA), "--dtype", "float32", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert 0 <= summary["wsc273_acc_full"] <= 100 and 0 <= summary["wsc273_acc_partial"] <= 100


# -- --source hub: the hub's rows, written back as files, score exactly as the same data in local files ----------

CANDIDATES = ["cat", "dog", "mat", "park", "bird", "tree", "toy", "hat", "sun", "cup"]
SENTENCES = [f"The {CANDIDATES[i % 10]} sat on the {CANDIDATES[(i + 3) % 10]} ." for i in range(1, 21)]
STORY = "The cat sat on the mat. The dog ran to the park."
QUESTIONS, ANSWERS = ["Where did the cat sit?", "Who ran?"], ["on the mat", "the dog"]
PASSAGES = ["The cat sat on the mat and looked at the dog", "A bird sang in the tree near the park"]
PAIRS = [("The cat sat.", "Le chat."), ("The dog ran.", "Le chien."), ("A bird sang.", "Un oiseau."),
         ("The sun rose.", "Le soleil."), ("The rain fell.", "La pluie."), ("A boat sank.", "Un bateau.")]  # fmt: skip

# Each task's rows as its pinned hub split holds them (the layouts of the `datasets` versions of these sets).
HUB_ROWS: dict[tuple[str, str | None, str], list[dict]] = {
    ("ptb_text_only", "penn_treebank", "test"): [{"sentence": "the cat sat on the mat"},
                                                 {"sentence": "a dog ran to the park"}],
    ("Salesforce/wikitext", "wikitext-2-v1", "test"): [{"text": ""}, {"text": " = Cats = \n"}, {"text": ""},
                                                       {"text": " The cat sat on the mat . It was n't a dog . \n"}],
    ("EleutherAI/lambada_openai", "default", "test"): [{"text": p} for p in PASSAGES],
    ("cam-cs/cbt", "CN", "validation"): [{"sentences": SENTENCES, "question": "The XXXXX ran to the park .",
                                          "answer": "dog", "options": CANDIDATES}],
    ("stanfordnlp/coqa", None, "validation"): [{"source": "mctest", "story": STORY, "questions": QUESTIONS,
                                                "answers": {"input_text": ANSWERS, "answer_start": [0, 24],
                                                            "answer_end": [10, 31]}}],
    ("abisee/cnn_dailymail", "3.0.0", "test"): [{"article": "The cat sat on the mat. " * 8,
                                                 "highlights": "A cat sat.", "id": str(i)} for i in range(2)],
    ("wmt/wmt14", "fr-en", "test"): [{"translation": {"en": en, "fr": fr}} for en, fr in PAIRS],
    ("google-research-datasets/nq_open", "nq_open", "validation"): [{"question": f"who sat on mat {i}",
                                                                     "answer": ["the cat"]} for i in range(9)],
}  # fmt: skip


def write_local_files(root: Path) -> None:
    """HUB_ROWS's data in each dataset's original file layout, written by hand (not by the hub module)."""
    files = {
        "ptb/ptb.test.txt": " the cat sat on the mat \n a dog ran to the park \n",
        "wikitext-2/wiki.test.tokens": " \n = Cats = \n \n The cat sat on the mat . It was n't a dog . \n",
        "lambada/lambada_test.jsonl": "".join(json.dumps({"text": p}) + "\n" for p in PASSAGES),
        "cbt/cbtest_CN_valid_2000ex.txt": "".join(f"{i} {t}\n" for i, t in enumerate(SENTENCES, 1))
        + "21 The XXXXX ran to the park .\tdog\t\t" + "|".join(CANDIDATES) + "\n\n",
        "coqa/coqa-dev-v1.0.json": json.dumps({"version": "1.0", "data": [{
            "id": "s1", "story": STORY,
            "questions": [{"input_text": q, "turn_id": t} for t, q in enumerate(QUESTIONS, 1)],
            "answers": [{"input_text": a, "turn_id": t} for t, a in enumerate(ANSWERS, 1)]}]}),
        "cnn-dm/test.jsonl": "".join(json.dumps({"article": "The cat sat on the mat. " * 8, "highlights": "A cat sat.",
                                                 "id": str(i)}) + "\n" for i in range(2)),
        "wmt14/newstest2014.en": "".join(en + "\n" for en, _ in PAIRS),
        "wmt14/newstest2014.fr": "".join(fr + "\n" for _, fr in PAIRS),
        "nq-open/NQ-open.dev.jsonl": "".join(json.dumps({"question": f"who sat on mat {i}", "answer": ["the cat"]})
                                             + "\n" for i in range(9)),  # 8 shots + 1
    }  # fmt: skip
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


HUB_TASKS = ["ptb", "wikitext2", "lambada", "cbt-cn", "coqa", "cnn-dm", "wmt14-en-fr", "nq-open"]


class FakeHub:
    """Stands in for `datasets.load_dataset`: ``rows`` as in-memory datasets, anything else unreachable."""

    def __init__(self) -> None:
        self.rows = dict(HUB_ROWS)
        self.calls: list[tuple] = []

    def load_dataset(self, path: str, name: str | None = None, *, split: str, revision: str | None = None, **kw):
        import datasets

        self.calls.append((path, name, split, revision))
        if (path, name, split) not in self.rows:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\nmore detail")
        return datasets.Dataset.from_list(self.rows[(path, name, split)])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import datasets

    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake.load_dataset)
    monkeypatch.setattr(hub_module, "unreachable", lambda endpoint, timeout=0: None)  # no network in these tests
    return fake


def model_dir(model_home: Path) -> str:
    return str(Store(model_home).resolve("model").path)


def scores(metrics: dict) -> dict:
    """A task's results without the keys that say where the data was and how long it took."""
    return {k: v for k, v in metrics.items() if k not in ("file", "data", "seconds")}


def test_hub_source_scores_like_the_same_local_files(gpt2, home: Path, model_home: Path, tmp_path: Path, hub: FakeHub):
    write_local_files(tmp_path / "local")
    (tmp_path / "empty").mkdir()
    common = [model_dir(model_home), *(a for t in HUB_TASKS for a in ("--task", t)), "--limit", "3",
              "--dtype", "float32", "--device", "cpu", "--json"]  # fmt: skip
    local = gpt2("eval", "zero-shot", *common, "--data-dir", str(tmp_path / "local"), "--source", "local")
    assert local.code == 0, local.err
    assert hub.calls == []  # local files only
    loaded = gpt2("eval", "zero-shot", *common, "--data-dir", str(tmp_path / "empty"), "--source", "hub")
    assert loaded.code == 0, loaded.err
    assert json.loads(loaded.out)["ref"] == "eval@v2"  # a new eval, not the local one reused
    assert {c[:3] for c in hub.calls} == set(HUB_ROWS) and all(c[3] is None for c in hub.calls)
    store = Store(home)
    by_local = json.loads(store.resolve("eval@v1").file("metrics.json").read_text())["results"]
    by_hub = json.loads(store.resolve("eval@v2").file("metrics.json").read_text())["results"]
    assert set(by_hub) == set(HUB_TASKS)
    for task in HUB_TASKS:
        assert scores(by_hub[task]) == scores(by_local[task]), task
    assert by_local["ptb"]["data"]["source"] == "local"
    assert by_local["ptb"]["data"]["files"][0]["path"] == str((tmp_path / "local/ptb/ptb.test.txt").resolve())
    ptb = by_hub["ptb"]["data"]
    assert (ptb["source"], ptb["dataset"], ptb["config"], ptb["split"], ptb["revision"]) == (
        "hub", "ptb_text_only", "penn_treebank", "test", None)  # fmt: skip
    assert ptb["files"][0]["path"].startswith(str(home / ".cache" / "eval-data"))
    for task in set(HUB_TASKS) - {"coqa"}:  # written back byte for byte (CoQA's JSON is laid out differently)
        shas = [[f["sha256"] for f in by[task]["data"]["files"]] for by in (by_hub, by_local)]
        assert shas[0] == shas[1], task
    assert len(by_hub["wmt14-en-fr"]["data"]["files"]) == 2  # the French side is an input too
    manifest_inputs = store.resolve("eval@v2").inputs
    assert {i["hub"]["dataset"] for i in manifest_inputs if "hub" in i} == {k[0] for k in HUB_ROWS}
    assert store.resolve("eval@v2").params["hub"]["ptb"] == "ptb_text_only/penn_treebank/test@main"


def test_local_source_never_calls_the_hub_and_auto_prefers_local(
    gpt2, home: Path, model_home: Path, tmp_path: Path, hub: FakeHub
):
    write_local_files(tmp_path)
    base = ["eval", "zero-shot", model_dir(model_home), "--limit", "2", "--dtype", "float32", "--device", "cpu"]
    missing = gpt2(*base, "--task", "text8", "--task", "ptb", "--data-dir", str(tmp_path), "--source", "local")
    assert missing.code == 1 and f"{tmp_path}/text8/text8 not found; get it from" in missing.err
    auto = gpt2(*base, "--task", "ptb", "--data-dir", str(tmp_path), "--json")
    assert auto.code == 0, auto.err
    assert hub.calls == []  # neither the missing file under --source local nor a present one under auto
    metrics = json.loads(Store(home).resolve(json.loads(auto.out)["ref"]).file("metrics.json").read_text())
    assert metrics["results"]["ptb"]["data"]["source"] == "local"
    (tmp_path / "ptb" / "ptb.test.txt").unlink()
    hub.rows.clear()  # offline
    offline = gpt2(*base, "--task", "ptb", "--data-dir", str(tmp_path))  # auto, no file: the hub, unreachable
    assert offline.code == 1 and hub.calls == [("ptb_text_only", "penn_treebank", "test", None)]
    error = [line for line in offline.err.splitlines() if "error" in line]  # the rest is the INFO log
    assert len(error) == 1 and error[0].startswith("gpt2: error: ptb: ")
    assert "ptb: cannot load ptb_text_only (penn_treebank, test) from the Hugging Face hub" in offline.err
    assert f"put {tmp_path}/ptb/ptb.test.txt there instead" in offline.err
    only_local = gpt2(*base, "--task", "enwik8", "--source", "hub")
    assert only_local.code == 2 and "enwik8 has no pinned Hugging Face dataset" in only_local.err
    assert gpt2(*base, "--task", "ptb", "--source", "web").code == 2


# -- offline: a hub that cannot be reached is known in seconds, and `datasets`' cache still serves -------------

PTB = hub_module.HUB_SPECS["ptb"]
PTB_README = "---\nconfigs:\n- config_name: penn_treebank\n  data_files:\n  - split: test\n    path: test.jsonl\n---\n"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port bound but not listening: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def http_port() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 for the length of the test."""

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def cache_ptb(hf_datasets: Path) -> None:
    """ptb's hub split in `datasets`' cache at ``hf_datasets``, where a load of it online leaves it."""
    import datasets

    repo = hf_datasets.parent / "repo" / PTB.dataset  # a local copy of the repository, named as on the hub
    repo.mkdir(parents=True)
    (repo / "README.md").write_text(PTB_README)
    (repo / "test.jsonl").write_text('{"sentence": "the cat sat"}\n')
    datasets.load_dataset(str(repo), PTB.config, split=PTB.split, cache_dir=str(hf_datasets))


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_port: int) -> Path:
    """`datasets` pointed at a closed local port, as HF_ENDPOINT points it at import, and at an empty cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf" / "datasets"


def test_an_unreachable_hub_fails_in_seconds_naming_the_local_file(no_hub: Path, tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(Gpt2Error) as error:
        hub_module.fetch("ptb", PTB, tmp_path / "eval-data", "ptb/ptb.test.txt", local=tmp_path / "ptb.test.txt")
    assert time.monotonic() - start < 5  # the hub client's retries took about 25 s
    message = str(error.value)
    assert "\n" not in message and message.startswith("ptb: cannot load ptb_text_only (penn_treebank, test)")
    assert "the hub is unreachable: 127.0.0.1:" in message
    assert f"put {tmp_path / 'ptb.test.txt'} there instead and use --source local" in message


def test_an_unreachable_hub_still_loads_from_the_datasets_cache_in_seconds(no_hub: Path, tmp_path: Path):
    cache_ptb(no_hub)
    start = time.monotonic()
    root = hub_module.fetch("ptb", PTB, tmp_path / "eval-data", "ptb/ptb.test.txt", local=tmp_path / "x")
    assert time.monotonic() - start < 5
    assert (root / "ptb" / "ptb.test.txt").read_text() == " the cat sat \n"
    import datasets

    assert datasets.config.HF_HUB_OFFLINE is False  # offline mode only while loading


def test_the_probe_reaches_a_live_server_directly_or_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, http_port: int, closed_port: int
):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        for variable in (name, name.upper()):
            monkeypatch.delenv(variable, raising=False)
    assert hub_module.unreachable(f"http://127.0.0.1:{http_port}") is None
    assert "Connection refused" in (hub_module.unreachable(f"http://127.0.0.1:{closed_port}") or "")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{http_port}")  # the hub only through the proxy
    assert hub_module.unreachable("https://hub.invalid") is None
    monkeypatch.setenv("no_proxy", "hub.invalid")
    assert hub_module.unreachable("https://hub.invalid") is not None
    released = threading.Event()

    def hang(*args: object, **kwargs: object) -> socket.socket:  # a lookup that hangs until the test ends
        released.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        assert hub_module.unreachable("https://hub.invalid", timeout=0.2) == "no connection to hub.invalid:443 in 0.2 s"
        assert time.monotonic() - start < 2
    finally:
        released.set()


def test_a_reachable_hub_is_loaded_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http_port: int):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{http_port}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    offline_when_loaded = []

    def load_dataset(*args: object, **kwargs: object) -> datasets.Dataset:
        offline_when_loaded.append(datasets.config.HF_HUB_OFFLINE)
        return datasets.Dataset.from_list([{"sentence": "a dog ran"}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    root = hub_module.fetch("ptb", PTB, tmp_path / "eval-data", "ptb/ptb.test.txt", local=tmp_path / "x")
    assert offline_when_loaded == [False] and (root / "ptb" / "ptb.test.txt").read_text() == " a dog ran \n"


OFFLINE_FETCH = """
import sys
from pathlib import Path
from gpt2cli.eval import hub

def probed(*args):
    sys.exit("the hub was probed")

hub.unreachable = probed
root = hub.fetch("ptb", hub.HUB_SPECS["ptb"], Path(sys.argv[1]), "ptb/ptb.test.txt", local=Path("x"))
print((root / "ptb" / "ptb.test.txt").read_text(), end="")
"""


def test_offline_mode_loads_from_the_datasets_cache_without_a_probe(tmp_path: Path, closed_port: int):
    cache_ptb(tmp_path / "hf" / "datasets")
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}",
        "PYTHONPATH": str(Path(hub_module.__file__).parents[2]),
    }
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", OFFLINE_FETCH, str(tmp_path / "eval-data")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == " the cat sat \n"


def test_wsc_rows_become_a_collection_the_reader_takes(tmp_path: Path):
    from gpt2cli.eval.hub import write_wsc
    from gpt2cli.eval.winograd import read_wsc

    text = "The city councilmen refused the demonstrators a permit because they feared violence."
    other = "Tom & Ann said he was late."
    rows = [{"text": text, "pronoun": "they", "pronoun_loc": text.index("they"), "quote": "they feared violence",
             "quote_loc": 0, "options": ["The city councilmen", "The demonstrators"], "label": 0,
             "source": "(Winograd 1972)"},
            {"text": other, "pronoun": "he", "pronoun_loc": other.index("he "), "quote": "", "quote_loc": 0,
             "options": ["Tom", "Ann"], "label": 1, "source": ""}]  # fmt: skip
    write_wsc(rows, tmp_path / "WSCollection.xml")
    schemas = read_wsc(tmp_path / "WSCollection.xml", limit=None)
    assert [(s.text1, s.pronoun, s.text2, s.answers, s.correct) for s in schemas] == [
        ("The city councilmen refused the demonstrators a permit because", "they", "feared violence.",
         ("The city councilmen", "The demonstrators"), 0),
        ("Tom & Ann said", "he", "was late.", ("Tom", "Ann"), 1),
    ]  # fmt: skip


# -- --overlap-with: the share of each task's 8-grams in a corpus's Bloom filter -------------------------------------


def test_overlap_with_a_corpus(gpt2, home: Path, model_home: Path, tmp_path: Path):
    texts = [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(SAMPLE.glob("*.txt"))][:12]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t, "url": f"https://site{i}.example/a"}) + "\n"
                            for i, t in enumerate(texts)))  # fmt: skip
    data = tmp_path / "data"
    write_local_files(data)
    built = run_cli(home, "dedupe", "--input", str(docs), "--overlap", str(data / "lambada/lambada_test.jsonl"),
                    "--workers", "1")  # fmt: skip
    assert built.returncode == 0, built.stderr
    import pyarrow.parquet as pq

    corpus = Store(home).resolve("corpus")
    kept = pq.read_table(corpus.file("documents-00000.parquet")).column("text").to_pylist()
    words = kept[0].split()
    passages = [" ".join(words[i : i + 40]) for i in (0, 40)]  # two test passages taken from the corpus
    (data / "lambada" / "lambada_test.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    (data / "ptb" / "ptb.test.txt").write_text(" ".join(f"zebra{i} quokka{i * 7} marmot{i * 13}" for i in range(40)))
    result = gpt2("eval", "zero-shot", model_dir(model_home), "--task", "lambada", "--task", "ptb", "--data-dir",
                  str(data), "--source", "local", "--overlap-with", corpus.ref, "--dtype", "float32", "--device",
                  "cpu", "--json")  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads(result.out)["summary"]
    assert summary["lambada_overlap_8gram_percent"] == 100.0 and summary["ptb_overlap_8gram_percent"] == 0.0
    evaluated = Store(home).resolve("eval")
    metrics = json.loads(evaluated.file("metrics.json").read_text())["results"]
    ngrams = sum(len(ngram_items(p)) for p in passages)
    assert ngrams >= 2 * (40 - 7) and metrics["lambada"]["overlap_8gram_ngrams"] == ngrams
    assert metrics["lambada"]["overlap_8gram_found"] == ngrams
    assert metrics["ptb"]["overlap_8gram_ngrams"] == 120 - 7 and metrics["ptb"]["overlap_8gram_found"] == 0
    assert metrics["ptb"]["overlap_corpus"] == corpus.ref and evaluated.params["overlap_with"] == corpus.ref
    assert {"ref": corpus.ref, "manifest_sha256": corpus.manifest_sha256} in evaluated.inputs
    bare = Store(home).produce("corpus", params={"bare": 1}, inputs=[],
                               build=lambda d: (d.dir / "report.json").write_text("{}")).artifact  # fmt: skip
    no_bloom: CliResult = gpt2("eval", "zero-shot", model_dir(model_home), "--task", "ptb", "--data-dir", str(data),
                               "--overlap-with", bare.ref)  # fmt: skip
    assert no_bloom.code == 2 and len(no_bloom.err.strip().splitlines()) == 1
    assert f"{bare.ref} has no 8-gram Bloom filter" in no_bloom.err and "gpt2 dedupe --overlap" in no_bloom.err


# -- bad data and bad options: one line on stderr, no version, no draft ---------------------------------------------


def one_error_line(result: CliResult) -> str:
    """The command's error, after asserting it is the only line of stderr that is not an INFO log."""
    lines = [line for line in result.err.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("gpt2: error: "), result.err
    return lines[0]


def test_undecodable_data_files_are_an_error_naming_the_file(gpt2, home: Path, model_home: Path, tmp_path: Path):
    for rel, bom in (("ptb/ptb.test.txt", b""), ("text8/text8", b"\xef\xbb\xbf")):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(bom + b"the cat sat \xff\xfe on the mat\n")
    # the offset is the file's, byte-order mark included
    for task, rel, at in (("ptb", "ptb/ptb.test.txt", 12), ("text8", "text8/text8", 15)):
        result = gpt2("eval", "zero-shot", model_dir(model_home), "--task", task, "--data-dir", str(tmp_path),
                      "--source", "local", "--device", "cpu")  # fmt: skip
        assert result.code == 1
        assert one_error_line(result).endswith(
            f"cannot read {tmp_path / rel}: 'utf-8' codec can't decode b'\\xff' at byte {at}"
        )
    assert Store(home).latest("eval") is None


EMPTY_FILES = {
    "ptb": ("ptb/ptb.test.txt", ""),
    "wikitext2": ("wikitext-2/wiki.test.tokens", " \n \n"),
    "1bw": ("1bw/news.en.heldout-00000-of-00050", ""),
    "enwik8": ("enwik8/enwik8", ""),
    "text8": ("text8/text8", ""),
    "lambada": ("lambada/lambada_test.jsonl", ""),
    "nq-open": ("nq-open/NQ-open.dev.jsonl", "\n"),
    "coqa": ("coqa/coqa-dev-v1.0.json", '{"version": "1.0", "data": []}'),
    "cnn-dm": ("cnn-dm/test.jsonl", ""),
    "wmt14-en-fr": ("wmt14/newstest2014.en", ""),
}


def test_an_empty_test_set_is_an_error_not_a_score(gpt2, home: Path, model_home: Path, tmp_path: Path):
    """No NaN (not JSON) and no 0.0 published for a file with nothing to score."""
    for rel, text in EMPTY_FILES.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "wmt14" / "newstest2014.fr").write_text("")
    for task, (rel, _) in EMPTY_FILES.items():
        result = gpt2("eval", "zero-shot", model_dir(model_home), "--task", task, "--data-dir", str(tmp_path),
                      "--source", "local", "--device", "cpu", "--json")  # fmt: skip
        assert result.code == 1 and result.out == "", task
        what = "text" if task in ("ptb", "wikitext2", "1bw", "enwik8", "text8") else "examples"
        assert one_error_line(result) == f"gpt2: error: {task}: {tmp_path / rel} has no {what}"
    write_local_files(tmp_path)  # WikiText-2's first line is blank: --limit 1 reads no text
    first = gpt2("eval", "zero-shot", model_dir(model_home), "--task", "wikitext2", "--limit", "1", "--data-dir",
                 str(tmp_path), "--device", "cpu")  # fmt: skip
    assert first.code == 1 and one_error_line(first).endswith("wiki.test.tokens has no text in its first 1 lines")
    assert not (home / "eval").exists()  # neither a version nor a draft


def test_an_undefined_metric_is_an_error():
    from gpt2cli.errors import Gpt2Error
    from gpt2cli.eval.stage import _defined

    assert _defined("ptb", {"ppl": 3.5, "words": 2}) == {"ppl": 3.5, "words": 2}
    with pytest.raises(Gpt2Error, match=r"^ptb: ppl, nll_sum undefined \(nan\): the task scored nothing$"):
        _defined("ptb", {"ppl": float("nan"), "token_ppl": float("inf"), "nll_sum": -math.inf, "words": 0})
    # an infinite perplexity is a score, the worst there is: null, as JSON has no infinity
    assert _defined("ptb", {"ppl": math.inf, "nll_sum": 3e5, "words": 2}) == {"ppl": None, "nll_sum": 3e5, "words": 2}


def test_an_overflowing_perplexity_is_reported_as_infinite(gpt2, home: Path, tokenizer: Tokenizer, tmp_path: Path):
    """A line of one 600-letter word: a mean NLL above ~709.78 nats per word, whose exp() overflows. It is the worst
    score there is, not a traceback: null in metrics.json and the summary, inf in the table."""
    rng = random.Random(0)
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(
        f" {''.join(rng.choice(string.ascii_letters) for _ in range(600))} \n"
    )
    base = ["eval", "zero-shot", save_model_dir(tmp_path / "model", tokenizer, 64), "--task", "ptb", "--data-dir",
            str(tmp_path), "--source", "local", "--device", "cpu"]  # fmt: skip
    table = gpt2(*base)
    assert table.code == 0, table.err
    assert re.search(r"ptb ppl +│ inf +│", table.out), table.out
    ptb = json.loads(Store(home).resolve("eval").file("metrics.json").read_text())["results"]["ptb"]
    assert ptb["ppl"] is None and ptb["nll_sum"] / ptb["words"] > 709.79 and ptb["token_ppl"] > 1
    assert json.loads(gpt2(*base, "--json").out)["summary"]["ptb_ppl"] is None


def test_a_model_with_nan_weights_publishes_no_scores(gpt2, home: Path, tokenizer: Tokenizer, tmp_path: Path):
    """A diverged checkpoint's scores are NaN; an argmax or a choice among them still gives a number (CBT's answer
    first: 100%, token 0 as every answer), so each family of tasks fails on them with one line, naming the task."""
    write_local_files(tmp_path / "data")
    model = save_model_dir(tmp_path / "diverged", tokenizer, 64, nan=True)
    for task, what in (("ptb", "scores"), ("lambada", "scores"), ("cbt-cn", "scores"), ("nq-open", "logits"),
                       ("cnn-dm", "logits")):  # fmt: skip
        result = gpt2("eval", "zero-shot", model, "--task", task, "--data-dir", str(tmp_path / "data"), "--source",
                      "local", "--device", "cpu")  # fmt: skip
        assert (result.code, result.out) == (1, ""), task
        assert one_error_line(result) == f"gpt2: error: {task}: the model's {what} are not finite (nan): is it a " \
            "diverged or damaged checkpoint?"  # fmt: skip
    assert Store(home).latest("eval") is None and not [p for p in (home / "eval").iterdir() if p.name[0] != "."]


def test_generation_tasks_fit_a_small_context(gpt2, home: Path, tokenizer: Tokenizer, tmp_path: Path):
    """A model of 32 positions (the tests' pretraining setting): every generation task generates at most half the
    context, and records it, rather than failing on a number of new tokens nobody asked for."""
    write_local_files(tmp_path / "data")
    tasks = ["nq-open", "coqa", "cnn-dm", "wmt14-en-fr"]
    result = gpt2("eval", "zero-shot", save_model_dir(tmp_path / "model", tokenizer, 32), *(a for t in tasks for a in
                  ("--task", t)), "--limit", "2", "--data-dir", str(tmp_path / "data"), "--device", "cpu")  # fmt: skip
    assert result.code == 0, result.err
    metrics = json.loads(Store(home).resolve("eval").file("metrics.json").read_text())["results"]
    assert {t: metrics[t]["new_tokens"] for t in tasks} == dict.fromkeys(tasks, 16)


def test_coqa_headline_is_the_official_f1(
    gpt2, home: Path, tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The paper's 55 F1 is the official script's: each gold answer left out in turn, the best F1 against the rest,
    averaged. The summary and the table show that one; the best F1 over all answers stays in metrics.json."""
    from gpt2cli.eval import qa
    from gpt2cli.eval.stage import comparison_rows

    turn = {"input_text": "What did Anna have?", "turn_id": 1}
    story = {"id": "s1", "story": "Anna had a red kite.", "questions": [turn],
             "answers": [{"input_text": "a red kite", "turn_id": 1}],
             "additional_answers": {"0": [{"input_text": "a kite", "turn_id": 1}],
                                    "1": [{"input_text": "kite", "turn_id": 1}]}}  # fmt: skip
    (tmp_path / "coqa").mkdir()
    (tmp_path / "coqa" / "coqa-dev-v1.0.json").write_text(json.dumps({"version": "1.0", "data": [story]}))
    monkeypatch.setattr(qa, "_answers", lambda model, tokenizer, prompts, *rest: ["red kite"] * len(prompts))
    result = gpt2("eval", "zero-shot", save_model_dir(tmp_path / "model", tokenizer, 64), "--task", "coqa",
                  "--data-dir", str(tmp_path), "--device", "cpu", "--json")  # fmt: skip
    assert result.code == 0, result.err
    # left out: "a red kite" -> best of "kite", "kite": F1 2/3; "a kite" or "kite" -> "a red kite": 1
    assert json.loads(result.out)["summary"] == {"coqa_f1": 88.8889, "coqa_exact_match": 100.0}
    evaluation = Store(home).resolve("eval")
    assert json.loads(evaluation.file("metrics.json").read_text())["results"]["coqa"]["f1_best_answer"] == 100.0
    assert [row for row in comparison_rows(evaluation) if "f1" in row[0]] == [("coqa f1", "88.89", "")]


def test_word_units_are_the_newlines_scored(tmp_path: Path):
    """One <eos> counted per line, one newline scored per line: lines end at "\\n" alone (not at the U+2028, U+0085
    or \\x0c str.splitlines also breaks at), and the last line kept (--limit N or a file without its final newline)
    keeps its newline."""
    from gpt2cli.eval.lm import count_units
    from gpt2cli.eval.stage import _detokenizer, _read_task

    path = tmp_path / "ptb.test.txt"
    path.write_text(" a b \n c\u2028d \n e\x85f\x0cg \n h i", encoding="utf-8")
    for limit in (None, 1, 2, 3, 4, 9):
        raw = _read_task("ptb", path, limit).items[0]
        scored = _detokenizer("ptb")(raw)
        assert scored.count("\n") == min(limit or 4, 4)
        assert count_units(raw, "word") == len(raw.split()) + scored.count("\n"), limit


def test_the_window_rule_states_the_left_context_each_prediction_gets():
    from gpt2cli.eval.lm import sliding_windows
    from gpt2cli.eval.stage import EvalOptions, _window

    for context, stride in ((32, 16), (32, 32), (16, 5)):
        windows = sliding_windows(1000, context, stride, align_last=True)
        least = min(first + 1 - begin for begin, _, first in windows[1:])  # tokens read before each prediction
        assert f"at least {least} tokens of left context" in _window(EvalOptions(stride=stride), context)["rule"]


def test_bad_options_are_usage_errors_before_anything_is_built(gpt2, home: Path, model_home: Path, tmp_path: Path):
    import shutil

    # a home with a tokenizer artifact, for --corpus tokenizer (without the evals other tests published there)
    shutil.copytree(model_home, home, ignore=lambda d, names: ["eval"] if Path(d) == model_home else [])
    write_local_files(tmp_path)
    base = ["eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path), "--device", "cpu"]
    for option, value, error in [
        ("--limit", "-3", "--limit must be at least 1 (leave it out for the whole test set), got -3"),
        ("--limit", "0", "--limit must be at least 1 (leave it out for the whole test set), got 0"),
        ("--stride", "0", "--stride must be at least 1 token (leave it out for half the context), got 0"),
        ("--stride", "100000", "--stride must be at most the model's context (128), got 100000"),
        ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
        ("--dtype", "bogus", "unknown --dtype 'bogus'; choose from auto, float32, bfloat16"),
        ("--device", "bogus", "unknown --device 'bogus'; choose from auto, cpu, cuda, cuda:N"),
        ("--corpus", "tokenizer", "tokenizer@v1 is a 'tokenizer' artifact; --corpus needs a 'corpus' artifact"),
    ]:  # fmt: skip
        result = gpt2(*base, *(["--task", "webtext"] if option == "--corpus" else []), option, value)
        assert result.code == 2 and one_error_line(result) == f"gpt2: error: {error}", (option, value)
    assert not (home / "eval").exists()  # neither a version nor a draft
    twice = gpt2(*base, "--task", "ptb", "--limit", "1", "--json")
    assert twice.code == 0, twice.err
    assert Store(home).resolve(json.loads(twice.out)["ref"]).params["tasks"] == ["ptb"]  # named twice, run once


def test_an_eval_of_a_directory_is_not_reused_after_its_tokenizer_changes(
    gpt2, home: Path, model_home: Path, tmp_path: Path
):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir(model_home), model)
    write_local_files(tmp_path / "data")
    args = ["eval", "zero-shot", str(model), "--task", "ptb", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
            "--dtype", "float32", "--json"]  # fmt: skip
    first = gpt2(*args)
    assert first.code == 0, first.err
    again = json.loads(gpt2(*args).out)
    assert again["reused"] and again["ref"] == json.loads(first.out)["ref"]
    merges = (model / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    (model / "vocab.bpe").write_text("\n".join(merges[:-1]) + "\n", encoding="utf-8")  # one merge fewer
    changed = json.loads(gpt2(*args).out)
    assert not changed["reused"] and changed["ref"] != again["ref"]


def test_help_names_every_task_and_what_limit_counts(gpt2, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough for a paragraph on one line: only hard breaks remain
    out = gpt2("eval", "zero-shot", "--help").out
    lines = [line.strip() for line in out.splitlines()]
    summary = next(line for line in lines if line.startswith("The paper's zero-shot tasks"))
    for family in ("WikiText-2", "PTB", "1BW", "enwik8", "text8", "WebText", "LAMBADA", "CBT", "Winograd", "CoQA",
                   "CNN/Daily Mail", "WMT-14", "Natural Questions"):  # fmt: skip
        assert family in summary, family
    assert any(line.startswith("Each task reads") and line.endswith("split and revision.") for line in lines)
    assert "N thousand characters (enwik8, text8)" in out
