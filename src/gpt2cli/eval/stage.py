"""The `gpt2 eval zero-shot` stage: the paper's zero-shot tasks (section 3) on a model, into an `eval` artifact.

Language modelling is scored per canonical unit of each dataset (words for WikiText and PTB, tokens and
bytes for our own held-out WebText split) after the dataset's invertible de-tokenizer, as the paper did.
Data files are read from `--data-dir` (default: `$GPT2_EVAL_DATA`, else `../shared/data`) under the names
listed in TASKS; a missing file is a one-line error that names it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2cli.artifacts import Artifact, Published, Store, artifact_input, file_input
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import GPT, fast_dtype

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


def resolve_data_dir(options: EvalOptions) -> Path:
    return Path(options.data_dir or os.environ.get("GPT2_EVAL_DATA") or DEFAULT_DATA_DIR)


def task_file(task: Task, data_dir: Path) -> Path | None:
    return next((data_dir / f for f in task.files if (data_dir / f).is_file()), None)


def available_tasks(options: EvalOptions, store: Store) -> list[str]:
    data_dir = resolve_data_dir(options)
    names = [n for n, t in TASKS.items() if t.files and task_file(t, data_dir) is not None]
    if options.corpus or store.latest("corpus") is not None:
        names.append("webtext")
    return names


def _lm_task(name: str, path: Path, detokenize: Callable[[str], str]) -> Callable[..., dict[str, Any]]:
    from gpt2cli.eval.lm import count_units, evaluate_text

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        raw = path.read_text(encoding="utf-8")
        if options.limit:
            raw = "\n".join(raw.split("\n")[: options.limit])
        units = count_units(raw, "word")  # the dataset's own words, one <eos> per line
        context = model.config.n_ctx
        result = evaluate_text(model, tokenizer, detokenize(raw), unit="word", units=units, context=context,
                               stride=options.stride or context // 2, batch_size=options.batch_size, device=device,
                               dtype=dtype)  # fmt: skip
        return {
            "ppl": result.unit_ppl,
            "token_ppl": result.token_ppl,
            "nll_sum": result.nll_sum,
            "tokens": result.tokens,
            "words": result.units,
            "file": str(path),
        }

    return run


def _lambada_task(path: Path) -> Callable[..., dict[str, Any]]:
    from gpt2cli.eval.lambada import evaluate_lambada, read_lambada

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        passages = read_lambada(path)[: options.limit or None]
        plain = evaluate_lambada(model, tokenizer, passages, batch_size=options.batch_size, device=device, dtype=dtype)
        filtered = evaluate_lambada(model, tokenizer, passages, stop_word_filter=True, batch_size=options.batch_size,
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


def _char_lm_task(path: Path, unit: str) -> Callable[..., dict[str, Any]]:
    """enwik8 (bits per byte) and text8 (bits per character): the raw last 5M units, no de-tokenizer."""
    from gpt2cli.eval.lm import evaluate_text

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        data = path.read_bytes()[-_LAST_5M:] if unit == "byte" else path.read_text(encoding="utf-8")[-_LAST_5M:]
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        if options.limit:
            text = text[: options.limit * 1000]  # --limit N: the first N thousand units
        units = len(text.encode("utf-8")) if unit == "byte" else len(text)
        context = model.config.n_ctx
        r = evaluate_text(model, tokenizer, text, unit=unit, units=units, context=context,
                          stride=options.stride or context // 2, batch_size=options.batch_size, device=device,
                          dtype=dtype)  # fmt: skip
        key = "bits_per_byte" if unit == "byte" else "bits_per_char"
        return {key: r.bits_per_unit, "token_ppl": r.token_ppl, "nll_sum": r.nll_sum, "tokens": r.tokens,
                f"{unit}s": r.units, "file": str(path)}  # fmt: skip

    return run


def _french_of(english: Path) -> Path:
    name = english.name.replace("-src.en.sgm", "-ref.fr.sgm") if english.name.endswith(".sgm") else english.stem + ".fr"
    return english.with_name(name)


def _scored_task(name: str, path: Path) -> Callable[..., dict[str, Any]]:
    """The tasks that score or generate answers: each module's reader and evaluate function."""

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        common = {"batch_size": options.batch_size, "device": device, "dtype": dtype}
        limit = options.limit or None
        if name.startswith("cbt-"):
            from gpt2cli.eval.cbt import evaluate_cbt, read_cbt

            result: Any = evaluate_cbt(model, tokenizer, read_cbt(path)[:limit], **common)
        elif name == "wsc273":
            from gpt2cli.eval.winograd import evaluate_wsc, read_wsc

            result = evaluate_wsc(model, tokenizer, read_wsc(path)[:limit], **common)
        elif name == "nq-open":
            from gpt2cli.eval.qa import evaluate_nq_open, read_nq_open

            items = read_nq_open(path)
            result = evaluate_nq_open(model, tokenizer, items[:limit], pool=items, **common)
        elif name == "coqa":
            from gpt2cli.eval.qa import evaluate_coqa, read_coqa

            result = evaluate_coqa(model, tokenizer, read_coqa(path)[:limit], **common)
        elif name == "cnn-dm":
            from gpt2cli.eval.summarize import evaluate_cnn_dm, read_cnn_dm

            new_tokens = min(100, model.config.n_ctx // 2)  # the paper's 100, unless the context is small
            result = evaluate_cnn_dm(model, tokenizer, read_cnn_dm(path)[:limit], max_new_tokens=new_tokens, **common)
        else:
            from gpt2cli.eval.translate import evaluate_wmt14, read_wmt14

            french = _french_of(path)
            if not french.is_file():
                raise Gpt2Error(f"{name}: {french} not found (the French side of {path})")
            pairs = read_wmt14(path, french)
            direction = name.removeprefix("wmt14-")
            result = evaluate_wmt14(model, tokenizer, pairs[:limit], direction=direction, pool=pairs,
                                    max_new_tokens=min(128, model.config.n_ctx // 2), **common)  # fmt: skip
        return {**result.as_dict(), "file": str(path)}

    return run


def _webtext_task(store: Store, corpus: Artifact) -> Callable[..., dict[str, Any]]:
    from gpt2cli.documents import open_documents
    from gpt2cli.eval.lm import evaluate_text

    def run(
        model: GPT, tokenizer: Tokenizer, options: EvalOptions, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        texts = [d.text for d in open_documents(store, str(corpus.path), [], 0.0) if d.split == "val"]
        texts = texts[: options.limit or None]
        if not texts:
            raise Gpt2Error(f"{corpus.ref} has no held-out (val) documents")
        nll = tokens = n_bytes = 0.0
        context = model.config.n_ctx
        for text in texts:
            r = evaluate_text(model, tokenizer, text, unit="byte", units=len(text.encode()), context=context,
                              stride=options.stride or context // 2, batch_size=options.batch_size, device=device,
                              dtype=dtype)  # fmt: skip
            nll, tokens, n_bytes = nll + r.nll_sum, tokens + r.tokens, n_bytes + r.units
        import math

        return {
            "token_ppl": math.exp(nll / tokens),
            "bits_per_byte": nll / n_bytes / math.log(2),
            "nll_sum": nll,
            "tokens": int(tokens),
            "bytes": int(n_bytes),
            "documents": len(texts),
            "corpus": corpus.ref,
        }

    return run


def zero_shot(
    store: Store, *, model_ref: str, options: EvalOptions, force: bool = False, wait: bool = False
) -> Published:
    from gpt2cli.eval.detokenize import ptb_detokenize, wikitext_detokenize

    source = Path(model_ref).expanduser()
    model_dir = source if source.is_dir() else store.resolve(model_ref).path
    device = torch.device("cuda" if options.device == "auto" and torch.cuda.is_available() else
                          "cpu" if options.device == "auto" else options.device)  # fmt: skip
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(options.dtype) or fast_dtype(device)
    model = GPT.load(model_dir, map_location=device).eval()
    tokenizer = Tokenizer.load(model_dir)
    data_dir = resolve_data_dir(options)
    names = list(options.tasks) or available_tasks(options, store)
    if not names:
        raise UsageError(f"no task has its data in {data_dir} and there is no corpus; pass --data-dir or --tasks")
    runners: dict[str, Callable[..., dict[str, Any]]] = {}
    inputs: list[dict[str, Any]] = []
    for name in names:
        if name not in TASKS:
            raise UsageError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        task = TASKS[name]
        if name == "webtext":
            corpus = store.resolve(options.corpus or "corpus")
            runners[name] = _webtext_task(store, corpus)
            inputs.append(artifact_input(corpus))
            continue
        path = task_file(task, data_dir)
        if path is None:
            raise Gpt2Error(f"{name}: {data_dir / task.files[0]} not found; get it from {task.source}")
        inputs.append(file_input(path))
        if name == "lambada":
            runners[name] = _lambada_task(path)
        elif name in ("enwik8", "text8"):
            runners[name] = _char_lm_task(path, "byte" if name == "enwik8" else "char")
        elif name in ("wikitext2", "wikitext103", "ptb", "1bw"):
            # 1BW is tokenized like PTB (spaces before punctuation and clitics): the same de-tokenizer
            runners[name] = _lm_task(name, path, wikitext_detokenize if name.startswith("wikitext") else ptb_detokenize)
        else:
            runners[name] = _scored_task(name, path)
    if not source.is_dir():
        inputs.insert(0, artifact_input(store.resolve(model_ref)))
    else:
        inputs.insert(0, {"path": str(source.resolve()), "bytes": 0, "sha256": _dir_digest(source)})
    size = PAPER_SIZES.get(model.num_params())
    params = {"tasks": names, "stride": options.stride, "limit": options.limit, "dtype": str(dtype),
              "model_size": size, "n_ctx": model.config.n_ctx}  # fmt: skip

    def build(draft: Any) -> dict[str, Any]:
        import json

        results: dict[str, Any] = {}
        for name, run in runners.items():
            started = time.time()
            log.info("evaluating %s", name)
            results[name] = {
                **run(model, tokenizer, options, device, dtype),
                "seconds": round(time.time() - started, 2),
            }
        paper = PAPER_TABLE3.get(size or "", {})
        (draft.dir / "metrics.json").write_text(json.dumps({"results": results, "paper": paper}, indent=2))
        return _summary(results)

    return store.produce("eval", params=params, inputs=inputs, build=build, force=force, wait=wait)


def _dir_digest(directory: Path) -> str:
    import hashlib

    from gpt2cli.artifacts import sha256_file

    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            digest.update(sha256_file(directory / name).encode())
    return digest.hexdigest()


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, metrics in results.items():
        for key in METRIC_KEYS:
            if key in metrics:
                flat[f"{name}_{key}"] = round(metrics[key], 4)
    return flat


METRIC_KEYS = ("ppl", "acc", "acc_stopword_filter", "acc_full", "acc_partial", "f1", "exact_match", "rouge1",
               "rouge2", "rougeL", "bleu", "token_ppl", "bits_per_byte", "bits_per_char")  # fmt: skip

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
                rows.append((f"{name} {key}", f"{metrics[key]:.2f}", "" if theirs is None else f"{theirs:.2f}"))
    return rows


def task_names() -> Sequence[str]:
    return list(TASKS)
