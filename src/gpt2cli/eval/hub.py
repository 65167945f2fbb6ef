"""The zero-shot tasks' data from the Hugging Face hub (`datasets`), written back as the files the readers take.

Why files: every reader in ``gpt2cli.eval`` parses its dataset's original layout, with its own checks. Writing a
hub split in that layout, under the names ``stage.TASKS`` expects, lets the same readers and runners score it, so
a task's numbers do not depend on how its data arrived; the file's sha256 is the eval's input either way.

Each task has one pinned split: dataset id, config, split and revision. The revisions are the hubs' commit
shas; none could be looked up where this was written (no hub access), so every spec uses ``REVISION`` (None:
the repository's main branch when loaded). Put a sha there to pin a snapshot. The loaded revision is recorded
with the eval either way.

What a hub split cannot give back, and so differs from the original files:

* ``coqa``: ``stanfordnlp/coqa`` has one answer per turn, not the dev set's 3 additional answers, so F1 is
  against the one answer (the official script averages over 4).
* ``ptb``: ``ptb_text_only`` strips each line; the file is rebuilt in Mikolov's layout (a space at both ends of
  each line, final newline), which the word count and the de-tokenizer do not see anyway.
* ``wsc273``: the schema is rebuilt from the sentence and the pronoun's offset; the collection's ``<quote>`` is
  not there (the reader does not use it).

enwik8, text8 and 1BW have no pinned split: enwik8 and text8 are scored on exact bytes/characters (the last 5M)
that a text column cannot be trusted to keep, and 1BW's heldout shard is not on the hub as such. They, and the
webtext task (a corpus artifact), are local only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from gpt2cli.errors import Gpt2Error

log = logging.getLogger(__name__)

Rows = Iterable[Mapping[str, Any]]

# The hub commit of every split below. None: the main branch at load time, because the shas could not be looked
# up offline; set it to a commit sha to pin the data exactly.
REVISION: str | None = None


@dataclass(frozen=True)
class HubSpec:
    """One pinned hub split and how to write its rows as the task's local file."""

    dataset: str
    config: str | None
    split: str
    write: Callable[[Rows, Path], None]  # rows -> the file at the given path (and, for WMT, its French side)
    revision: str | None = REVISION

    def __str__(self) -> str:
        return f"{self.dataset} ({self.config or 'default'}, {self.split})"

    def record(self) -> dict[str, Any]:
        """What the eval records as the task's source."""
        return {"dataset": self.dataset, "config": self.config, "split": self.split, "revision": self.revision}

    def slug(self) -> str:
        """The cache folder of this split: one per dataset, config, split and revision."""
        return "--".join((self.dataset.replace("/", "__"), self.config or "default", self.split,
                          self.revision or "main"))  # fmt: skip


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole (a temporary file, then a rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def write_wikitext(rows: Rows, target: Path) -> None:
    """Rows are the file's lines (blank ones empty): the Salesforce layout again, blank lines as " "."""
    lines = (row["text"].rstrip("\n") for row in rows)
    _write(target, "".join((line if line.strip() else " ") + "\n" for line in lines))


def write_ptb(rows: Rows, target: Path) -> None:
    """Rows are stripped sentences: Mikolov's layout again, a space at both ends of each line."""
    _write(target, "".join(f" {' '.join(row['sentence'].split())} \n" for row in rows))


def write_lambada(rows: Rows, target: Path) -> None:
    _write(target, _jsonl({"text": row["text"]} for row in rows))


def write_cbt(rows: Rows, target: Path) -> None:
    """Rows hold 20 sentences, the question, the answer and 10 options: the CBTest numbered-line layout."""
    out = []
    for row in rows:
        sentences = [_one_line(s) for s in row["sentences"]]
        out += [f"{i} {s}\n" for i, s in enumerate(sentences, 1)]
        options = "|".join(o.strip() for o in row["options"])
        out.append(f"{len(sentences) + 1} {_one_line(row['question'])}\t{row['answer'].strip()}\t\t{options}\n\n")
    _write(target, "".join(out))


def write_wsc(rows: Rows, target: Path) -> None:
    """Rows hold the sentence, the pronoun and its character offset, the options and the label: the XML again."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<collection>\n']
    for row in rows:
        text, pron, at = row["text"], row["pronoun"], int(row["pronoun_loc"])
        if text[at : at + len(pron)] != pron:
            raise ValueError(f"the pronoun {pron!r} is not at offset {at} of {text!r}")
        answers = "".join(f"<answer>{escape(o)}</answer>" for o in row["options"])
        out.append(f"<schema>\n<text><txt1>{escape(text[:at])}</txt1><pron>{escape(pron)}</pron>"
                   f"<txt2>{escape(text[at + len(pron) :])}</txt2></text>\n<answers>{answers}</answers>\n"
                   f"<correctAnswer>{chr(ord('A') + int(row['label']))}</correctAnswer>\n"
                   f"<source>{escape(row.get('source') or '')}</source>\n</schema>\n")  # fmt: skip
    _write(target, "".join(out) + "</collection>\n")


def write_coqa(rows: Rows, target: Path) -> None:
    """Rows hold the story, its questions and one answer per turn: the CoQA dev JSON again."""
    data = []
    for i, row in enumerate(rows):
        answers = row["answers"]
        answers = answers["input_text"] if isinstance(answers, Mapping) else [a["input_text"] for a in answers]
        questions = [q if isinstance(q, str) else q["input_text"] for q in row["questions"]]
        data.append({"id": row.get("id") or str(i), "source": row.get("source") or "", "story": row["story"],
                     "questions": [{"input_text": q, "turn_id": t} for t, q in enumerate(questions, 1)],
                     "answers": [{"input_text": a, "turn_id": t} for t, a in enumerate(answers, 1)]})  # fmt: skip
    _write(target, json.dumps({"version": "1.0", "data": data}, ensure_ascii=False))


def write_cnn_dm(rows: Rows, target: Path) -> None:
    _write(target, _jsonl({"article": r["article"], "highlights": r["highlights"], "id": r.get("id") or ""}
                          for r in rows))  # fmt: skip


def write_wmt14(rows: Rows, target: Path) -> None:
    """Rows hold {"translation": {"en", "fr"}}: two line-aligned files, ``X.en`` (target) and ``X.fr`` beside it."""
    pairs = [row["translation"] for row in rows]
    for language, path in (("en", target), ("fr", target.with_name(target.stem + ".fr"))):
        # one segment per line, as read_segments splits them: at "\n" alone (a U+2028 in a segment stays)
        _write(path, "".join(p[language].replace("\n", " ").strip() + "\n" for p in pairs))


def write_nq_open(rows: Rows, target: Path) -> None:
    _write(target, _jsonl({"question": r["question"], "answer": list(r["answer"])} for r in rows))


_WMT14 = HubSpec("wmt/wmt14", "fr-en", "test", write_wmt14)

HUB_SPECS: dict[str, HubSpec] = {
    "wikitext2": HubSpec("Salesforce/wikitext", "wikitext-2-v1", "test", write_wikitext),
    "wikitext103": HubSpec("Salesforce/wikitext", "wikitext-103-v1", "test", write_wikitext),
    "ptb": HubSpec("ptb_text_only", "penn_treebank", "test", write_ptb),
    "lambada": HubSpec("EleutherAI/lambada_openai", "default", "test", write_lambada),
    "cbt-cn": HubSpec("cam-cs/cbt", "CN", "validation", write_cbt),
    "cbt-ne": HubSpec("cam-cs/cbt", "NE", "validation", write_cbt),
    "wsc273": HubSpec("winograd_wsc", "wsc273", "test", write_wsc),
    "coqa": HubSpec("stanfordnlp/coqa", None, "validation", write_coqa),
    "cnn-dm": HubSpec("abisee/cnn_dailymail", "3.0.0", "test", write_cnn_dm),
    "wmt14-en-fr": _WMT14,
    "wmt14-fr-en": _WMT14,
    "nq-open": HubSpec("google-research-datasets/nq_open", "nq_open", "validation", write_nq_open),
}


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only errors from these libraries' loggers while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


PROBE_SECONDS = 3.0  # a connection to the hub (or its proxy) that takes longer counts as none


def unreachable(endpoint: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why a TCP connection to ``endpoint``, or to the proxy the hub client would use for it, cannot be made;
    None when it can.

    Why: with no network the hub client retries for about 25 s before giving up; a connect, name lookup included,
    tells in at most ``timeout``. It runs in a daemon thread because a name lookup has no timeout of its own.
    """
    url = urllib.parse.urlsplit(endpoint)
    target = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    proxies = urllib.request.getproxies()  # *_proxy and no_proxy, as requests and httpx read them
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(target[0]):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target = (via.hostname or "", via.port or {"http": 80, "https": 443}.get(via.scheme, 1080))
    why: list[str | None] = [f"no connection to {target[0]}:{target[1]} in {timeout:g} s"]

    def connect() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            why[0] = None
        except OSError as e:
            why[0] = f"{target[0]}:{target[1]}: {e}"

    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return why[0]


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """`datasets` and the hub client in offline mode while the block runs (when ``on``): its cache only, at once.

    Why: both read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, at import, into these flags.
    """
    import datasets
    import huggingface_hub.constants

    flags = [(m, m.HF_HUB_OFFLINE) for m in (datasets.config, huggingface_hub.constants) if on]
    for module, _ in flags:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, before in flags:
            module.HF_HUB_OFFLINE = before


def fetch(name: str, spec: HubSpec, cache: Path, relpath: str, *, local: Path) -> Path:
    """Load ``spec`` through ``datasets`` and write it as ``cache/<split>/relpath``; returns ``cache/<split>``.

    Any failure to load (offline, unknown id or config) is one line naming the task, the dataset and ``local``,
    the file that would do instead. Unless offline mode is already set, the hub is probed first: when it is
    unreachable, only `datasets`' cache is tried, so a machine without network fails (or loads) in seconds.
    """
    root = cache / spec.slug()
    log.info("%s: loading %s from the Hugging Face hub", name, spec)
    down: str | None = None  # why the hub is unreachable, when probed and it is
    try:
        import datasets

        if not datasets.config.HF_HUB_OFFLINE:
            down = unreachable(datasets.config.HF_ENDPOINT)
            if down:
                log.info("%s: the hub is unreachable (%s); trying the datasets cache", name, down)
        with _quiet("huggingface_hub", "datasets"), _offline(down is not None):  # a failure ends in our one line
            rows = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, revision=spec.revision)
    except Exception as e:  # `datasets` raises many types (connection, not found, bad config): all end here
        why = (
            f"the hub is unreachable: {down}; no copy in the datasets cache"
            if down
            else f"{type(e).__name__}: {_one_line(str(e))[:200]}"
        )
        raise Gpt2Error(f"{name}: cannot load {spec} from the Hugging Face hub ({why}); put {local} there "
                        "instead and use --source local") from None  # fmt: skip
    try:
        spec.write(rows, root / relpath)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Gpt2Error(f"{name}: the rows of {spec} are not in the layout expected ({type(e).__name__}: "
                        f"{_one_line(str(e))[:200]})") from None  # fmt: skip
    return root
