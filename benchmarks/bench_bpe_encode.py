"""Encoding throughput: gpt2cli's BPE `Tokenizer` vs tiktoken's GPT-2 encoding, on the same text and vocabulary.

Both sides are built offline from OpenAI's GPT-2 files in ../shared/data/gpt2-tokenizer (encoder.json, vocab.bpe):
ours with `Tokenizer.from_files`, tiktoken with `tiktoken.load.data_gym_to_mergeable_bpe_ranks` and the GPT-2
pre-tokenizer pattern (`tiktoken.get_encoding` would need the internet).

The text is WikiText-2 test, PTB test and the LAMBADA test passages concatenated. Measured, best of N repeats:

* single call: the whole text in one call (ours `encode`, tiktoken `encode_ordinary`);
* batch: the text cut at line ends into documents of at least ``--doc-chars`` characters (ours `encode_batch`,
  tiktoken `encode_ordinary_batch` with ``num_threads=os.cpu_count()``);
* pathological inputs: 1 MB of "a", of "^", of spaces, and of spaces followed by "x". A side that raises
  (tiktoken's Rust core panics on very long whitespace runs) is reported as "crashed" instead of stopping the run.

The ids of the two sides must be identical wherever both finish; the script exits 1 if they are not.
MB means 10^6 bytes of UTF-8.

Note: ours hands the actual BPE work to tiktoken's Rust core (with ranks taken from our files) whenever the
vocabulary allows it, so per byte both sides run the same engine. What differs is the scheduling: ours cuts a long
text at places where the pre-tokenizer always cuts and encodes the pieces on all cores (tiktoken's `encode_ordinary`
uses one thread), and in batch mode hands each thread a run of documents instead of one document at a time.

Run from the repository root (needs ../shared/data, and the `bench` extra for nothing beyond tiktoken):

    .venv/bin/python benchmarks/bench_bpe_encode.py            # defaults: 5 repeats, 3 for the pathological inputs
    .venv/bin/python benchmarks/bench_bpe_encode.py --repeats 3 --data /path/to/shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"

TOKENIZER_FILES = ("gpt2-tokenizer/encoder.json", "gpt2-tokenizer/vocab.bpe")
TEXT_FILES = ("wikitext-2/wiki.test.tokens", "ptb/ptb.test.txt", "lambada/lambada_test.jsonl")
MB = 1_000_000


def fail(message: str, code: int = 1) -> None:
    print(f"bench_bpe_encode: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_data(data: Path) -> None:
    missing = [rel for rel in (*TOKENIZER_FILES, *TEXT_FILES) if not (data / rel).is_file()]
    if missing:
        fail(f"shared data not found under {data} (missing: {', '.join(missing)}); pass --data DIR")


def load_text(data: Path) -> str:
    wikitext = (data / TEXT_FILES[0]).read_text(encoding="utf-8")
    ptb = (data / TEXT_FILES[1]).read_text(encoding="utf-8")
    with (data / TEXT_FILES[2]).open(encoding="utf-8") as f:
        lambada = [json.loads(line)["text"] for line in f if line.strip()]
    return "\n".join([wikitext, ptb, *lambada]) + "\n"


def split_documents(text: str, min_chars: int) -> list[str]:
    """Consecutive lines grouped into documents of at least ``min_chars`` characters; they join back to ``text``."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= min_chars:
            docs.append("".join(current))
            current, size = [], 0
    if current:
        docs.append("".join(current))
    return docs


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Fastest of ``repeats`` calls and the result of the last one; re-raises whatever the call raises."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def build_tiktoken(data: Path, pattern: str) -> Any:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / TOKENIZER_FILES[1]), encoder_json_file=str(data / TOKENIZER_FILES[0])
    )
    special = {"<|endoftext|>": 50256}
    return tiktoken.Encoding("gpt2-local", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at position {i}: ours {x}, tiktoken {y}"
    return f"lengths differ: ours {len(a)} ids, tiktoken {len(b)} ids"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data directory (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement on real text; best is kept")
    parser.add_argument("--patho-repeats", type=int, default=3, help="repeats per pathological input; best is kept")
    parser.add_argument("--doc-chars", type=int, default=1000, help="minimum characters per document in batch mode")
    parser.add_argument("--patho-mb", type=float, default=1.0, help="size of each pathological input in MB")
    args = parser.parse_args(argv)

    data = args.data.resolve()
    check_data(data)
    # The Rust panic hook prints a full backtrace when RUST_BACKTRACE is set; one line is enough here.
    os.environ["RUST_BACKTRACE"] = "0"
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the panic messages on stderr

    import tiktoken

    from gpt2cli.bpe import GPT2_PATTERN, Tokenizer

    tok = Tokenizer.from_files(data / TOKENIZER_FILES[0], data / TOKENIZER_FILES[1])
    enc = build_tiktoken(data, GPT2_PATTERN)
    threads = os.cpu_count() or 1

    text = load_text(data)
    docs = split_documents(text, args.doc_chars)
    n_bytes = len(text.encode("utf-8"))
    print(f"python {platform.python_version()}, tiktoken {tiktoken.__version__}, cpus {threads}")
    print(f"ours uses tiktoken's engine: {tok.engine_compatible}")
    print(f"text: {', '.join(TEXT_FILES)} = {n_bytes:,} bytes, {len(text):,} chars")
    print(f"batch: {len(docs):,} documents of >= {args.doc_chars} chars, num_threads={threads}")
    print(f"best of {args.repeats} repeats\n")

    ok = True
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("single call", lambda: tok.encode(text), lambda: enc.encode_ordinary(text)),
        (
            "batch",
            lambda: tok.encode_batch(docs),
            lambda: enc.encode_ordinary_batch(docs, num_threads=threads),
        ),
    ]
    tok.encode("warm up"), enc.encode_ordinary("warm up")
    print(f"{'mode':<12} {'ours MB/s':>10} {'tiktoken MB/s':>14} {'ours/tiktoken':>14} {'tokens':>10}  ids")
    for name, ours_fn, theirs_fn in cases:
        t_ours, ids_ours = best_of(args.repeats, ours_fn)
        t_theirs, ids_theirs = best_of(args.repeats, theirs_fn)
        same = ids_ours == ids_theirs
        n_tokens = sum(map(len, ids_ours)) if name == "batch" else len(ids_ours)
        ours_mbs, theirs_mbs = n_bytes / MB / t_ours, n_bytes / MB / t_theirs
        verdict = "identical" if same else "DIFFER"
        ratio = ours_mbs / theirs_mbs
        print(f"{name:<12} {ours_mbs:>10.2f} {theirs_mbs:>14.2f} {ratio:>14.3f} {n_tokens:>10,}  {verdict}")
        if not same:
            ok = False
            if name == "batch":
                k = next(i for i, (a, b) in enumerate(zip(ids_ours, ids_theirs, strict=True)) if a != b)
                print(f"  document {k}: {first_difference(ids_ours[k], ids_theirs[k])}", file=sys.stderr)
            else:
                print(f"  {first_difference(ids_ours, ids_theirs)}", file=sys.stderr)

    size = int(args.patho_mb * MB)
    pathological = [
        (f'{args.patho_mb:g} MB of "a"', "a" * size),
        (f'{args.patho_mb:g} MB of "^"', "^" * size),
        (f"{args.patho_mb:g} MB of spaces", " " * size),
        (f'{args.patho_mb:g} MB of spaces + "x"', " " * size + "x"),
    ]
    print(f"\npathological inputs (best of {args.patho_repeats}; seconds per call)")
    print(f"{'input':<24} {'ours s':>10} {'tiktoken s':>12} {'ours/tiktoken':>14}  ids")
    for name, s in pathological:
        results: list[tuple[float | None, Any, str]] = []
        for fn in (lambda s=s: tok.encode(s), lambda s=s: enc.encode_ordinary(s)):
            try:
                seconds, ids = best_of(args.patho_repeats, fn)
                results.append((seconds, ids, f"{seconds:.4f}"))
            except BaseException as e:  # tiktoken's PanicException derives from BaseException
                if isinstance(e, KeyboardInterrupt):
                    raise
                results.append((None, None, f"crashed: {short(e)}"))
        (t_ours, ids_ours, shown_ours), (t_theirs, ids_theirs, shown_theirs) = results
        ratio, verdict = "-", "not compared"
        if t_ours is not None and t_theirs is not None:
            ratio = f"{t_ours / t_theirs:.3f}"
            verdict = "identical" if ids_ours == ids_theirs else "DIFFER"
            if verdict == "DIFFER":
                ok = False
                print(f"  {name}: {first_difference(ids_ours, ids_theirs)}", file=sys.stderr)
        cells = [shown if t is not None else "crashed" for t, shown in ((t_ours, shown_ours), (t_theirs, shown_theirs))]
        print(f"{name:<24} {cells[0]:>10} {cells[1]:>12} {ratio:>14}  {verdict}")
        for side, t, shown in (("ours", t_ours, shown_ours), ("tiktoken", t_theirs, shown_theirs)):
            if t is None:
                print(f"{'':<24} {side} {shown}")

    if not ok:
        fail("ids differ between gpt2cli and tiktoken (see above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
