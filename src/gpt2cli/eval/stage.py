"""The `gpt2 eval zero-shot` stage: the paper's zero-shot tasks (section 3) on a model, into an `eval` artifact.

Language modelling is scored per canonical unit of each dataset (words for WikiText and PTB, tokens and
bytes for our own held-out WebText split) after the dataset's invertible de-tokenizer, as the paper did.
Data files are read from `--data-dir` (default: `$GPT2_EVAL_DATA`, else `../shared/data`) under the names
listed in TASKS; a missing file is a one-line error that names it. With `--source hub` (or `auto` when the file is
missing) a task's pinned Hugging Face split is written in that same layout under `$GPT2_HOME/.cache/eval-data`
(`gpt2cli.eval.hub`), so the same readers score it. `--overlap-with corpus@vN` adds each task's 8-gram overlap
with the corpus's Bloom filter (paper section 4, Table 6).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2cli.artifacts import Artifact, Published, Store, artifact_input, file_input, is_path_reference
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.eval.files import read_bytes, read_text, text_lines
from gpt2cli.model import GPT, NotFinite, fast_dtype, model_directory
from gpt2cli.sample import DTYPES, load_model, resolve_device

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("../shared/data")

# Table 3 of the paper, by model size (perplexities; LAMBADA accuracy in %).
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "124M": {"lambada_ppl": 35.13, "lambada_acc": 45.99, "cbt_cn": 87.65, "cbt_ne": 83.4, "wikitext2": 29.41,
             "ptb": 65.85, "enwik8": 1.16, "text8": 1.17, "wikitext103": 37.50, "1bw": 75.20},
    "355M": {"lambada_ppl": 15.60, "lambada_acc": 55.48, "cbt_cn": 92.35, "cbt_ne": 87.1, "wikitext2": 22.76,
             "ptb": 47.33, "enwik8": 1.01, "text8": 1.06, "wikitext103": 26.37, "1bw": 55.72},
    "774M": {"lambada_ppl": 10.87, "lambada_acc": 60.12, "cbt_cn": 93.45, "cbt_ne": 88.0, "wikitext2": 19.93,
             "ptb": 40.31, "enwik8": 0.97, "text8": 1.02, "wikitext103": 22.05, "1bw": 44.575},
    "1558M": {"lambada_ppl": 8.63, "lambada_acc": 63.24, "cbt_cn": 93.30, "cbt_ne": 89.05, "wikitext2": 18.34,
              "ptb": 35.76, "enwik8": 0.93, "text8": 0.98, "wikitext103": 17.48, "1bw": 42.16},
}  # fmt: skip
PAPER_SIZES = {124_439_808: "124M", 354_823_168: "355M", 774_030_080: "774M", 1_557_611_200: "1558M"}


@dataclass(frozen=True)
class Task:
    name: str
    files: tuple[str, ...]  # candidate paths under the data directory, first found wins
    source: str  # where to get the file, for the error message


# newstest2014 as the English file of a line-aligned pair; the French one is found beside it (_french_of).
_WMT14 = ("wmt14/newstest2014.en", "wmt14/newstest2014-fren-src.en.sgm")
# enwik8 and text8 are scored on their last 5M units, the usual test split (90M/5M/5M).
_LAST_5M = 5_000_000
# Part of an eval's identity: bump it when the same model and data give other numbers, so that an eval an older
# release made is run again rather than reused. 2: quotes and brackets in a row de-tokenized in pairs, LAMBADA's
# target without a newline before it, a byte-order mark not scored, enwik8's cut character not replaced.
EVAL_RULES_VERSION = 2

TASKS: dict[str, Task] = {
    "wikitext2": Task("wikitext2", ("wikitext-2/wiki.test.tokens",), "wikitext-2-v1 (Salesforce), wiki.test.tokens"),
    "wikitext103": Task(
        "wikitext103",
        ("wikitext-103/wiki.test.tokens", "wikitext-103/tokens-reconstructed/wiki.test.tokens"),
        "wikitext-103-v1 (Salesforce), wiki.test.tokens",
    ),
    "ptb": Task("ptb", ("ptb/ptb.test.txt",), "Mikolov's simple-examples PTB, ptb.test.txt"),
    "lambada": Task("lambada", ("lambada/lambada_test.jsonl",), "OpenAI's lambada_test.jsonl (gpt-2 repository)"),
    "enwik8": Task(
        "enwik8", ("enwik8/enwik8",), "Hutter Prize enwik8 (mattmahoney.net/dc/enwik8.zip); test = last 5M bytes"
    ),
    "text8": Task("text8", ("text8/text8",), "text8 (mattmahoney.net/dc/text8.zip); test = last 5M characters"),
    "1bw": Task(
        "1bw",
        ("1bw/news.en.heldout-00000-of-00050",),
        "One Billion Word benchmark, heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050",
    ),
    "cbt-cn": Task(
        "cbt-cn",
        ("cbt/cbtest_CN_valid_2000ex.txt", "CBTest/data/cbtest_CN_valid_2000ex.txt"),
        "CBTest (fb.ai/babi), data/cbtest_CN_valid_2000ex.txt",
    ),
    "cbt-ne": Task(
        "cbt-ne",
        ("cbt/cbtest_NE_valid_2000ex.txt", "CBTest/data/cbtest_NE_valid_2000ex.txt"),
        "CBTest (fb.ai/babi), data/cbtest_NE_valid_2000ex.txt",
    ),
    "wsc273": Task("wsc273", ("winograd/WSCollection.xml",), "the Winograd Schema Collection, WSCollection.xml"),
    "coqa": Task("coqa", ("coqa/coqa-dev-v1.0.json",), "CoQA dev (stanfordnlp.github.io/coqa), coqa-dev-v1.0.json"),
    "cnn-dm": Task(
        "cnn-dm",
        ("cnn-dm/test.jsonl", "cnn-dm/test.parquet"),
        "Hugging Face cnn_dailymail 3.0.0 test split saved as JSONL or Parquet (article, highlights, id)",
    ),
    "wmt14-en-fr": Task("wmt14-en-fr", _WMT14, "WMT-14 newstest2014 fr-en (statmt.org/wmt14 or sacrebleu --echo)"),
    "wmt14-fr-en": Task("wmt14-fr-en", _WMT14, "WMT-14 newstest2014 fr-en (statmt.org/wmt14 or sacrebleu --echo)"),
    "nq-open": Task(
        "nq-open", ("nq-open/NQ-open.dev.jsonl",), "NQ-open dev (google-research-datasets), NQ-open.dev.jsonl"
    ),
    "webtext": Task("webtext", (), "the held-out split of a corpus artifact (--corpus)"),
}


@dataclass(frozen=True)
class EvalOptions:
    tasks: tuple[str, ...] = ()
    data_dir: Path | None = None
    corpus: str | None = None
    stride: int | None = None  # default: half the context
    batch_size: int = 8
    limit: int | None = None  # first N documents/examples, for quick runs
    device: str = "auto"
    dtype: str = "auto"
    source: str = "auto"  # auto: the local file when found, else the hub; local: never the hub; hub: always
    overlap_with: str | None = None  # a corpus with an 8-gram Bloom filter: each task's overlap with it

    def validate(self) -> None:
        """Every check that needs no model, run before it loads: a bad value is a usage error that leaves no draft
        and never becomes part of an artifact's identity (the stride against the context is checked on load)."""
        if unknown := [t for t in self.tasks if t not in TASKS]:
            raise UsageError(f"unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
        if self.source not in SOURCES:
            raise UsageError(f"unknown --source {self.source!r}; choose from {', '.join(SOURCES)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1 (leave it out for the whole test set), got {self.limit}")
        if self.stride is not None and self.stride < 1:
            raise UsageError(
                f"--stride must be at least 1 token (leave it out for half the context), got {self.stride}"
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        resolve_device(self.device)


SOURCES = ("auto", "local", "hub")
# Tasks that read a file (not the corpus's held-out split), by family: how their text is shown to the model.
_WORD_LM = ("wikitext2", "wikitext103", "ptb", "1bw")
_CHAR_LM = ("enwik8", "text8")


def resolve_data_dir(options: EvalOptions) -> Path:
    return Path(options.data_dir or os.environ.get("GPT2_EVAL_DATA") or DEFAULT_DATA_DIR)


def task_file(task: Task, data_dir: Path) -> Path | None:
    return next((data_dir / f for f in task.files if (data_dir / f).is_file()), None)


def available_tasks(options: EvalOptions, store: Store) -> list[str]:
    """The default task list: every task with its local file; with `--source hub`, every task with a hub split
    (`auto` does not download every dataset unasked)."""
    from gpt2cli.eval.hub import HUB_SPECS

    data_dir = resolve_data_dir(options)
    if options.source == "hub":
        names = [n for n in TASKS if n in HUB_SPECS]
    else:
        names = [n for n, t in TASKS.items() if t.files and task_file(t, data_dir) is not None]
    if options.corpus or store.latest("corpus") is not None:
        names.append("webtext")
    return names


def _lm_raw(path: Path, limit: int | None) -> str:
    """The tokenized file, or its first ``limit`` lines, every line with its newline: the newline the model
    predicts for each ``<eos>`` that ``count_units`` counts, the last line's too."""
    return "".join(f"{line}\n" for line in text_lines(read_text(path))[:limit])


def _detokenizer(name: str) -> Callable[[str], str]:
    from gpt2cli.eval.detokenize import ptb_detokenize, wikitext_detokenize

    # 1BW is tokenized like PTB (spaces before punctuation and clitics): the same de-tokenizer
    return wikitext_detokenize if name.startswith("wikitext") else ptb_detokenize


def _stride(options: EvalOptions, context: int) -> int:
    return options.stride or context // 2


def _window(options: EvalOptions, context: int) -> dict[str, Any]:
    """How a text longer than the model's context was scored, for the record."""
    stride = _stride(options, context)
    return {"context": context, "stride": stride,
            "rule": f"windows of {context} tokens start {stride} apart, the last one moved back to read a full "
                    "context; each token is predicted once, after the first window with at least "
                    f"{context - stride + 1} tokens of left context"}  # fmt: skip


Runner = Callable[[GPT, Tokenizer, EvalOptions, torch.device, torch.dtype], dict[str, Any]]


@dataclass(frozen=True)
class TaskData:
    """A task's test set, read before the build: a bad or empty file fails before any model work and leaves no
    draft, and the scores and the overlap (--overlap-with) read the very same items."""

    items: list[Any]  # what is scored, after --limit: a single text for the language-modelling tasks
    pool: list[Any]  # every item of the file: nq-open and wmt14 draw their example pairs from it


def _read_task(name: str, path: Path, limit: int | None) -> TaskData:
    """The task's items; none is an error naming the file, because an empty test set has no score (NaN, or 0)."""
    if name in _WORD_LM or name in _CHAR_LM:
        word = name in _WORD_LM
        text = _lm_raw(path, limit) if word else _char_text(path, "byte" if name == "enwik8" else "char", limit)
        if not text.strip():
            first = f" in its first {limit} {'lines' if word else 'thousand characters'}" if limit else ""
            raise Gpt2Error(f"{name}: {path} has no text{first}")
        return TaskData([text], [text])
    pool = _read_items(name, path)
    if not pool:
        raise Gpt2Error(f"{name}: {path} has no examples")
    return TaskData(pool[:limit], pool)


def _read_items(name: str, path: Path) -> list[Any]:
    """Every example of a task's file, by its module's reader (which names the file and line of a bad one)."""
    if name == "lambada":
        from gpt2cli.eval.lambada import read_lambada

        return read_lambada(path)
    if name.startswith("cbt-"):
        from gpt2cli.eval.cbt import read_cbt

        return read_cbt(path)
    if name == "wsc273":
        from gpt2cli.eval.winograd import read_wsc

        return read_wsc(path)
    if name == "nq-open":
        from gpt2cli.eval.qa import read_nq_open

        return read_nq_open(path)
    if name == "coqa":
        from gpt2cli.eval.qa import read_coqa

        return read_coqa(path)
    if name == "cnn-dm":
        from gpt2cli.eval.summarize import read_cnn_dm

        return read_cnn_dm(path)
    from gpt2cli.eval.translate import read_wmt14

    french = _french_of(path)
    if not french.is_file():
        raise Gpt2Error(f"{name}: {french} not found (the French side of {path})")
    return read_wmt14(path, french)


def _lm_task(name: str, path: Path, raw: str) -> Runner:
    from gpt2cli.eval.lm import count_units, evaluate_text

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        units = count_units(raw, "word")  # the dataset's own words, one <eos> per line
        context = model.config.n_ctx
        result = evaluate_text(model, tokenizer, _detokenizer(name)(raw), unit="word", units=units, context=context,
                               stride=_stride(options, context), align_last=True, batch_size=options.batch_size,
                               device=device, dtype=dtype)  # fmt: skip
        return {
            "ppl": result.unit_ppl,
            "token_ppl": result.token_ppl,
            "nll_sum": result.nll_sum,
            "tokens": result.tokens,
            "words": result.units,
            "file": str(path),
            "window": _window(options, context),
        }

    return run


def _lambada_task(path: Path, passages: list[str]) -> Runner:
    from gpt2cli.eval.lambada import evaluate_lambada_both

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        plain, filtered = evaluate_lambada_both(model, tokenizer, passages, batch_size=options.batch_size,
                                                device=device, dtype=dtype)  # fmt: skip
        return {
            "ppl": plain.ppl,
            "acc": 100.0 * plain.accuracy,
            "acc_stopword_filter": 100.0 * filtered.accuracy,
            "examples": plain.examples,
            "target_tokens": plain.target_tokens,
            "file": str(path),
        }

    return run


def _char_lm_task(path: Path, unit: str, text: str) -> Runner:
    """enwik8 (bits per byte) and text8 (bits per character): the raw last 5M units, no de-tokenizer."""
    from gpt2cli.eval.lm import evaluate_text

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        units = len(text.encode("utf-8")) if unit == "byte" else len(text)
        context = model.config.n_ctx
        r = evaluate_text(model, tokenizer, text, unit=unit, units=units, context=context,
                          stride=_stride(options, context), align_last=True, batch_size=options.batch_size,
                          device=device, dtype=dtype)  # fmt: skip
        key = "bits_per_byte" if unit == "byte" else "bits_per_char"
        return {key: r.bits_per_unit, "token_ppl": r.token_ppl, "nll_sum": r.nll_sum, "tokens": r.tokens,
                f"{unit}s": r.units, "file": str(path), "window": _window(options, context)}  # fmt: skip

    return run


def _char_text(path: Path, unit: str, limit: int | None) -> str:
    """The scored text of enwik8/text8: the last 5M units; ``--limit N``: the first N thousand characters of those."""
    if unit == "byte":  # the last 5M bytes may start inside a character: its tail belongs to the text before
        data = read_bytes(path)[-_LAST_5M:]
        start = next((i for i in range(min(3, len(data))) if not 0x80 <= data[i] < 0xC0), min(3, len(data)))
        text = data[start:].decode("utf-8", errors="replace")
    else:  # characters: the file must be UTF-8 throughout
        text = read_text(path)[-_LAST_5M:]
    return text[: limit * 1000] if limit else text


def _french_of(english: Path) -> Path:
    name = english.name.replace("-src.en.sgm", "-ref.fr.sgm") if english.name.endswith(".sgm") else english.stem + ".fr"
    return english.with_name(name)


def _new_tokens(wanted: int, model: GPT) -> int:
    """A generation task's new tokens: its own number (the paper's, where it gives one), at most half the model's
    context, so that a small model still has room for the prompt (the tests' models have 32 positions)."""
    return min(wanted, model.config.n_ctx // 2)


def _scored_task(name: str, path: Path, data: TaskData) -> Runner:
    """The tasks that score or generate answers: each module's evaluate function."""

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        common = {"batch_size": options.batch_size, "device": device, "dtype": dtype}
        if name.startswith("cbt-"):
            from gpt2cli.eval.cbt import evaluate_cbt

            result: Any = evaluate_cbt(model, tokenizer, data.items, **common)
        elif name == "wsc273":
            from gpt2cli.eval.winograd import evaluate_wsc

            result = evaluate_wsc(model, tokenizer, data.items, **common)
        elif name == "nq-open":
            from gpt2cli.eval.qa import QA_MAX_NEW_TOKENS, evaluate_nq_open

            result = evaluate_nq_open(model, tokenizer, data.items, pool=data.pool,
                                      max_new_tokens=_new_tokens(QA_MAX_NEW_TOKENS, model), **common)  # fmt: skip
        elif name == "coqa":
            from gpt2cli.eval.qa import QA_MAX_NEW_TOKENS, evaluate_coqa

            result = evaluate_coqa(model, tokenizer, data.items, max_new_tokens=_new_tokens(QA_MAX_NEW_TOKENS, model),
                                   **common)  # fmt: skip
        elif name == "cnn-dm":
            from gpt2cli.eval.summarize import SUMMARY_TOKENS, evaluate_cnn_dm

            result = evaluate_cnn_dm(model, tokenizer, data.items, max_new_tokens=_new_tokens(SUMMARY_TOKENS, model),
                                     **common)  # fmt: skip
        else:
            from gpt2cli.eval.translate import WMT_MAX_NEW_TOKENS, evaluate_wmt14

            direction = name.removeprefix("wmt14-")
            result = evaluate_wmt14(model, tokenizer, data.items, direction=direction, pool=data.pool,
                                    max_new_tokens=_new_tokens(WMT_MAX_NEW_TOKENS, model), **common)  # fmt: skip
        return {**result.as_dict(), "file": str(path)}

    return run


def _webtext_texts(store: Store, corpus: Artifact, limit: int | None) -> list[str]:
    from gpt2cli.documents import open_documents

    return [d.text for d in open_documents(store, str(corpus.path), [], None) if d.split == "val"][:limit]


def _webtext_task(corpus: Artifact, texts: list[str]) -> Runner:
    from gpt2cli.eval.lm import evaluate_texts, perplexity

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        context = model.config.n_ctx
        results = evaluate_texts(model, tokenizer, texts, unit="byte", context=context,
                                 stride=_stride(options, context), align_last=True, batch_size=options.batch_size,
                                 device=device, dtype=dtype)  # fmt: skip
        nll, tokens, n_bytes = (sum(getattr(r, key) for r in results) for key in ("nll_sum", "tokens", "units"))
        return {
            "token_ppl": perplexity(nll, tokens),
            "bits_per_byte": nll / n_bytes / math.log(2),
            "nll_sum": nll,
            "tokens": int(tokens),
            "bytes": int(n_bytes),
            "documents": len(texts),
            "corpus": corpus.ref,
            "window": _window(options, context),
        }

    return run


def _task_texts(name: str, data: TaskData) -> list[str]:
    """What the model is scored on, as text, for the overlap check."""
    if name in _WORD_LM:
        return [_detokenizer(name)(data.items[0])]
    if name in (*_CHAR_LM, "lambada", "webtext"):
        return data.items
    if name.startswith("cbt-"):
        from gpt2cli.eval.cbt import BLANK, cbt_detokenize

        # the book's text: the 20 sentences and the question with its blank filled by the answer
        return [" ".join(cbt_detokenize(s) for s in (*e.sentences, e.question.replace(BLANK, e.answer)))
                for e in data.items]  # fmt: skip
    if name == "wsc273":
        return [f"{s.text1} {s.pronoun} {s.text2}" for s in data.items]
    if name == "coqa":
        stories = list(dict.fromkeys(t.story for t in data.items))  # each story once, not once per turn
        return stories + [text for t in data.items for text in (t.question, *t.answers)]
    if name == "cnn-dm":
        return [text for a in data.items for text in (a.article, a.highlights)]
    if name == "nq-open":
        return [text for q in data.items for text in (q.question, *q.answers)]
    return [text for pair in data.items for text in (pair.en, pair.fr)]


def _defined(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The task's metrics as JSON holds them. NaN (or -inf) is no score, so it is an error. An infinite perplexity
    (a mean NLL too large for ``exp``) is a score, the worst there is: JSON has no infinity, so it is null, and
    ``nll_sum`` and the count beside it still give its logarithm; the table shows it as inf."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and (math.isnan(v) or v == -math.inf)]
    if bad:
        raise Gpt2Error(f"{name}: {', '.join(bad)} undefined ({metrics[bad[0]]}): the task scored nothing")
    return {key: None if value == math.inf else value for key, value in metrics.items()}


def _overlap_bloom(store: Store, ref: str) -> tuple[Artifact, Path]:
    """The corpus of ``--overlap-with`` and its Bloom filter file; a corpus built without one is an error."""
    from gpt2cli.dedupe.corpus import BLOOM

    corpus = store.resolve(ref, "corpus", option="--overlap-with")
    path = corpus.path / BLOOM
    if not path.is_file():
        raise UsageError(f"{corpus.ref} has no 8-gram Bloom filter ({BLOOM}); rebuild it with "
                         "`gpt2 dedupe --overlap FILE ...` to use --overlap-with")  # fmt: skip
    return corpus, path


def _overlap(bloom: Any, texts: Sequence[str], corpus: Artifact) -> dict[str, Any]:
    from gpt2cli.dedupe.bloom import overlap_report

    report = overlap_report(bloom, texts)
    return {"overlap_8gram_percent": report["percent"], "overlap_8gram_ngrams": report["ngrams"],
            "overlap_8gram_found": report["found"], "overlap_corpus": corpus.ref}  # fmt: skip


def _hub_cache(store: Store) -> Path:
    """Where hub splits are written as local files: beside the artifacts, outside any one artifact, because the
    files' sha256 is part of the eval's identity and must be known before the build starts."""
    return store.home / ".cache" / "eval-data"


def _locate(name: str, task: Task, data_dir: Path, source: str, store: Store) -> tuple[Path, dict[str, Any] | None]:
    """The task's file, local or written from its hub split, and the hub split's record (None when local)."""
    from gpt2cli.eval.hub import HUB_SPECS, fetch

    local = task_file(task, data_dir) if source != "hub" else None
    if local is not None:
        return local, None
    spec = HUB_SPECS.get(name)
    if spec is None:
        if source == "hub":
            raise UsageError(f"{name} has no pinned Hugging Face dataset; use --source local with "
                             f"{data_dir / task.files[0]} (from {task.source})")  # fmt: skip
        raise Gpt2Error(f"{name}: {data_dir / task.files[0]} not found; get it from {task.source}")
    if source == "local":
        raise Gpt2Error(f"{name}: {data_dir / task.files[0]} not found; get it from {task.source} "
                        f"(or use --source hub: {spec.dataset})")  # fmt: skip
    root = fetch(name, spec, _hub_cache(store), task.files[0], local=data_dir / task.files[0])
    return root / task.files[0], spec.record()


def zero_shot(
    store: Store, *, model_ref: str, options: EvalOptions, force: bool = False, wait: bool = False
) -> Published:
    options.validate()
    overlap = _overlap_bloom(store, options.overlap_with) if options.overlap_with else None
    model_dir = model_directory(model_ref, store)
    data_dir = resolve_data_dir(options)
    names = list(dict.fromkeys(options.tasks)) or available_tasks(options, store)  # a task named twice runs once
    if not names:
        raise UsageError(f"no task has its data in {data_dir} and there is no corpus; pass --data-dir, --task "
                         "or --source hub")  # fmt: skip
    runners: dict[str, Runner] = {}
    data: dict[str, TaskData] = {}  # each task's items, for --overlap-with
    origins: dict[str, dict[str, Any]] = {}  # where each task's data came from, for metrics.json
    hub_splits: dict[str, str] = {}
    inputs: list[dict[str, Any]] = []
    for name in names:
        task = TASKS[name]
        if name == "webtext":
            corpus = store.resolve(options.corpus or "corpus", "corpus", option="--corpus")
            texts = _webtext_texts(store, corpus, options.limit)
            if not texts:
                raise Gpt2Error(f"{corpus.ref} has no held-out (val) documents")
            data[name] = TaskData(texts, texts)
            runners[name] = _webtext_task(corpus, texts)
            origins[name] = {"source": "corpus", "corpus": corpus.ref}
            inputs.append(artifact_input(corpus))
            continue
        path, hub = _locate(name, task, data_dir, options.source, store)
        # the French side of newstest is read beside the English file: an input too, when it is there
        files = [path, _french_of(path)] if name.startswith("wmt14-") and _french_of(path).is_file() else [path]
        records = [{**file_input(f), **({"hub": hub} if hub else {})} for f in files]
        inputs += records
        origins[name] = {"source": "hub" if hub else "local", **(hub or {}),
                         "files": [{"path": r["path"], "sha256": r["sha256"]} for r in records]}  # fmt: skip
        if hub:
            hub_splits[name] = f"{hub['dataset']}/{hub['config']}/{hub['split']}@{hub['revision'] or 'main'}"
        data[name] = _read_task(name, path, options.limit)
        if name == "lambada":
            runners[name] = _lambada_task(path, data[name].items)
        elif name in _CHAR_LM:
            runners[name] = _char_lm_task(path, "byte" if name == "enwik8" else "char", data[name].items[0])
        elif name in _WORD_LM:
            runners[name] = _lm_task(name, path, data[name].items[0])
        else:
            runners[name] = _scored_task(name, path, data[name])
    if overlap and artifact_input(overlap[0]) not in inputs:
        inputs.append(artifact_input(overlap[0]))
    if not is_path_reference(model_ref):  # a version of the store: immutable, named by its manifest
        inputs.insert(0, artifact_input(store.resolve(model_dir)))
    else:  # a directory anyone may change: named by its files' contents
        inputs.insert(
            0, {"path": str(model_dir.resolve()), "directory": True, "bytes": 0, "sha256": _dir_digest(model_dir)}
        )
    device = resolve_device(options.device)
    dtype = DTYPES[options.dtype] or fast_dtype(device)
    model, tokenizer = load_model(model_dir, device)
    if options.stride is not None and options.stride > model.config.n_ctx:
        raise UsageError(f"--stride must be at most the model's context ({model.config.n_ctx}), got {options.stride}")
    size = PAPER_SIZES.get(model.num_params())
    params = {"tasks": names, "stride": options.stride, "limit": options.limit, "dtype": str(dtype),
              "model_size": size, "n_ctx": model.config.n_ctx, "rules_version": EVAL_RULES_VERSION}  # fmt: skip
    # only when used, so that the identity of earlier local-data evals does not change
    if hub_splits:  # a hub split is another source than a local file, even with the same bytes
        params["hub"] = hub_splits
    if overlap:
        params["overlap_with"] = overlap[0].ref

    def build(draft: Any) -> dict[str, Any]:
        import json

        from gpt2cli.dedupe.bloom import BloomFilter

        draft.inputs_read()  # every task's data was read above: scoring for hours reads none of it again

        bloom = BloomFilter.load(overlap[1]) if overlap else None
        results: dict[str, Any] = {}
        for name, run in runners.items():
            started = time.time()
            log.info("evaluating %s", name)
            try:
                scored = run(model, tokenizer, options, device, dtype)
            except NotFinite as e:  # the scorers do not know the task's name
                raise NotFinite(f"{name}: {e}") from None
            results[name] = {
                **_defined(name, scored),
                "seconds": round(time.time() - started, 2),
                "data": origins[name],
            }
            if overlap:
                results[name].update(_overlap(bloom, _task_texts(name, data[name]), overlap[0]))
        paper = PAPER_TABLE3.get(size or "", {})
        metrics = json.dumps({"results": results, "paper": paper}, indent=2, allow_nan=False)
        (draft.dir / "metrics.json").write_text(metrics)
        return _summary(results)

    return store.produce("eval", params=params, inputs=inputs, build=build, force=force, wait=wait)


# What GPT.load and Tokenizer.load read from a directory, plus tokenizer.json (the tokenizer other tools read there).
_MODEL_DIR_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "encoder.json", "vocab.bpe",
                    "vocab.json", "merges.txt", "tokenizer.json")  # fmt: skip


def _dir_digest(directory: Path) -> str:
    """The identity of a model directory: every file that decides its scores, by name and content (a changed
    vocabulary or merge list re-tokenizes every task, so an eval of the old one must not be reused)."""
    import hashlib

    from gpt2cli.artifacts import sha256_file

    digest = hashlib.sha256()
    for name in _MODEL_DIR_FILES:
        if (directory / name).is_file():
            digest.update(f"{name} {sha256_file(directory / name)}\n".encode())
    return digest.hexdigest()


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, metrics in results.items():
        for key in METRIC_KEYS:
            if key in metrics:
                flat[f"{name}_{key}"] = None if metrics[key] is None else round(metrics[key], 4)  # None: infinite
    return flat


METRIC_KEYS = ("ppl", "acc", "acc_stopword_filter", "acc_full", "acc_partial", "f1", "exact_match", "rouge1",
               "rouge2", "rougeL", "bleu", "token_ppl", "bits_per_byte", "bits_per_char",
               "overlap_8gram_percent")  # fmt: skip

PAPER_KEYS = {
    ("wikitext2", "ppl"): "wikitext2",
    ("wikitext103", "ppl"): "wikitext103",
    ("ptb", "ppl"): "ptb",
    ("lambada", "ppl"): "lambada_ppl",
    ("lambada", "acc_stopword_filter"): "lambada_acc",  # Table 3's LAMBADA accuracy is with the filter
    ("cbt-cn", "acc"): "cbt_cn",
    ("cbt-ne", "acc"): "cbt_ne",
    ("enwik8", "bits_per_byte"): "enwik8",
    ("text8", "bits_per_char"): "text8",
    ("1bw", "ppl"): "1bw",
}


def comparison_rows(artifact: Artifact) -> list[tuple[str, str, str]]:
    """(metric, ours, the paper's for this model size) for the results table."""
    import json

    data = json.loads(artifact.file("metrics.json").read_text())
    rows = []
    for name, metrics in data["results"].items():
        for key in METRIC_KEYS:
            if key in metrics:
                theirs = data["paper"].get(PAPER_KEYS.get((name, key), ""))
                ours = "inf" if metrics[key] is None else f"{metrics[key]:.2f}"  # null: an infinite perplexity
                rows.append((f"{name} {key}", ours, "" if theirs is None else f"{theirs:.2f}"))
    return rows


def task_names() -> Sequence[str]:
    return list(TASKS)
