"""BPE training: wall time and peak memory of gpt2cli's trainer vs Hugging Face `tokenizers` (BpeTrainer).

Both sides learn a byte-level BPE vocabulary of ``--vocab-size`` tokens (default 50257: 256 bytes, the merges and
<|endoftext|>) with ``min_frequency=2`` from the same corpus file:

* ours: `gpt2cli.bpe.train.count_corpus(texts, workers=os.cpu_count())`, then
  `learn_merges(counts, vocab_size - 257, min_frequency=2)`, then `Tokenizer.from_merges(merges)`.
  Counting runs in worker processes (forked); learning the merges is pure Python. The child checks that the
  counted pre-tokens cover exactly the corpus's bytes, and the script exits 1 if they do not.
* hf: `tokenizers.Tokenizer(models.BPE())` with the `ByteLevel(add_prefix_space=False)` pre-tokenizer and
  `BpeTrainer(vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], initial_alphabet=ByteLevel.alphabet())`,
  trained with `train_from_iterator` (Rust, multi-threaded).

The corpus is built from WikiText-2 test+valid, WikiText-103 test+valid, PTB test+valid and the LAMBADA test
passages in ../shared/data, cut into documents (WikiText articles, LAMBADA passages, PTB in runs of 100 sentences),
shuffled with a fixed seed and cycled until it holds ``--sizes-mb`` MB (10^6 bytes of UTF-8 text). These sources
hold about 7 MB of distinct text, so a larger corpus repeats it: counting grows with the size, the number of
distinct pre-tokens (what learning the merges works on) does not.

The corpus is written once per size to a temporary JSONL file ({"text": ...} per line); each side then runs in its
own child process (this script with ``--side``), which streams the file, so the memory of one side is not
mixed with the other's or with the parent's. Memory is measured three ways, the same for both sides:

* main RSS: peak RSS of the side's main process (`getrusage(RUSAGE_SELF).ru_maxrss`);
* tree RSS: peak over time of the summed RSS of the main process and all its descendants (ours' counting workers),
  sampled every 10 ms from /proc; pages shared between forked processes count once per process, so this
  over-states a process tree;
* tree PSS: the same sum of PSS (proportional set size, /proc/PID/smaps_rollup), where a shared page is split
  between the processes that share it: the tree's actual footprint.

Wall time covers reading the file and training, not interpreter start-up or imports.
A side that runs longer than ``--timeout-min`` minutes is killed and reported.

Run from the repository root (needs ../shared/data and the `bench` extra):

    .venv/bin/python benchmarks/bench_bpe_train.py                    # sizes 4 and 100 MB
    .venv/bin/python benchmarks/bench_bpe_train.py --sizes-mb 4 --vocab-size 50257 --timeout-min 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
MB = 1_000_000
MIB = 1 << 20

SOURCES = (
    "wikitext-2/wiki.test.tokens",
    "wikitext-2/wiki.valid.tokens",
    "wikitext-103/tokens-reconstructed/wiki.test.tokens",
    "wikitext-103/tokens-reconstructed/wiki.valid.tokens",
    "ptb/ptb.test.txt",
    "ptb/ptb.valid.txt",
    "lambada/lambada_test.jsonl",
)
RESULT_PREFIX = "RESULT "
# A WikiText article starts at a top-level heading line " = Title = " (sections use " = = ... = = ").
_ARTICLE = re.compile(r"^ = [^=].* = $")


def fail(message: str, code: int = 1) -> None:
    print(f"bench_bpe_train: error: {message}", file=sys.stderr)
    raise SystemExit(code)


# -- the corpus -------------------------------------------------------------------------------------


def wikitext_articles(text: str) -> list[str]:
    articles: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _ARTICLE.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(a) for a in articles if "".join(a).strip()]


def ptb_documents(text: str, sentences: int = 100) -> list[str]:
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i : i + sentences]) for i in range(0, len(lines), sentences)]


def base_documents(data: Path) -> list[str]:
    docs: list[str] = []
    for rel in SOURCES:
        path = data / rel
        if rel.endswith(".jsonl"):
            with path.open(encoding="utf-8") as f:
                docs += [json.loads(line)["text"] for line in f if line.strip()]
        elif rel.startswith("ptb/"):
            docs += ptb_documents(path.read_text(encoding="utf-8"))
        else:
            docs += wikitext_articles(path.read_text(encoding="utf-8"))
    random.Random(0).shuffle(docs)
    return docs


def _shifted(text: str, k: int) -> str:
    """``text`` with ASCII letters rotated by ``k`` places: the k-th repeat of the sources gets new words."""
    lower, upper = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    k %= 26
    return text.translate(str.maketrans(lower + upper, lower[k:] + lower[:k] + upper[k:] + upper[:k]))


def write_corpus(docs: list[str], size_mb: float, path: Path, distinct: bool = False) -> tuple[int, int]:
    """Cycle ``docs`` into a JSONL file until it holds ``size_mb`` MB of text; returns (documents, text bytes).

    With ``distinct``, the k-th pass over the sources has its letters rotated by k, so that the number of
    distinct pre-tokens grows with the size (up to 26 passes) as it does in a real corpus.
    """
    target = int(size_mb * MB)
    n_docs = n_bytes = 0
    with path.open("w", encoding="utf-8") as f:
        for k in itertools.count():
            for doc in docs:
                if n_bytes >= target:
                    return n_docs, n_bytes
                text = _shifted(doc, k) if distinct else doc
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                n_docs += 1
                n_bytes += len(text.encode("utf-8"))
    raise AssertionError("unreachable")


def read_corpus(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


# -- one side, in a child process -------------------------------------------------------------------


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return 0, 0
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])


class TreeMemory:
    """Peak summed RSS and PSS of this process and its descendants, sampled by a thread."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s, self.rss_kib, self.pss_kib = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = [os.getpid(), *_descendants(os.getpid())]
        rss, pss = map(sum, zip(*map(_memory_kib, pids), strict=True))
        self.rss_kib, self.pss_kib = max(self.rss_kib, rss), max(self.pss_kib, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> TreeMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def train_ours(corpus: Path, vocab_size: int, merges_out: Path) -> dict[str, Any]:
    from gpt2cli.bpe import Tokenizer
    from gpt2cli.bpe.tokenizer import token_to_str
    from gpt2cli.bpe.train import count_corpus, learn_merges

    workers = os.cpu_count() or 1
    start = time.perf_counter()
    counts = count_corpus(read_corpus(corpus), workers=workers)
    counted = time.perf_counter()
    merges = learn_merges(counts, vocab_size - 257, min_frequency=2)
    learned = time.perf_counter()
    tokenizer = Tokenizer.from_merges(merges)
    end = time.perf_counter()
    merges_out.write_text("\n".join(f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges) + "\n", encoding="utf-8")
    return {
        "wall_s": end - start,
        "count_s": counted - start,
        "merge_s": learned - counted,
        "merges": len(merges),
        "vocab_size": tokenizer.vocab_size,
        "distinct_pretokens": len(counts),
        "counted_bytes": sum(len(piece) * n for piece, n in counts.items()),
        "workers": workers,
    }


def train_hf(corpus: Path, vocab_size: int, merges_out: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    start = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(read_corpus(corpus), trainer=trainer)
    end = time.perf_counter()
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [m if isinstance(m, str) else " ".join(m) for m in merges]  # "a b" in older releases, [a, b] in newer
    merges_out.write_text("\n".join(pairs) + "\n", encoding="utf-8")
    return {"wall_s": end - start, "merges": len(pairs), "vocab_size": tokenizer.get_vocab_size()}


def child(side: str, corpus: Path, vocab_size: int, merges_out: Path) -> int:
    with TreeMemory() as tree:
        result = (train_ours if side == "ours" else train_hf)(corpus, vocab_size, merges_out)
    result["peak_rss_mib"] = peak_rss_mib(resource.RUSAGE_SELF)
    result["tree_rss_mib"], result["tree_pss_mib"] = tree.rss_kib / 1024, tree.pss_kib / 1024
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# -- the parent -------------------------------------------------------------------------------------


def run_side(side: str, corpus: Path, vocab_size: int, merges_out: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", side, "--corpus", str(corpus), "--vocab-size", str(vocab_size)]
    cmd += ["--merges-out", str(merges_out)]
    start = time.perf_counter()
    # Own session, so that on timeout the whole group (the child and its worker processes) can be killed.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"killed after {timeout_s / 60:g} min", "process_s": time.perf_counter() - start}
    process_s = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": f"exited {proc.returncode}", "process_s": process_s}
    return {**json.loads(lines[-1][len(RESULT_PREFIX) :]), "process_s": process_s}


def merges_overlap(a: Path, b: Path) -> str:
    ours = a.read_text(encoding="utf-8").splitlines()
    theirs = b.read_text(encoding="utf-8").splitlines()
    common = len(set(ours) & set(theirs))
    prefix = next(
        (i for i, (x, y) in enumerate(zip(ours, theirs, strict=False)) if x != y), min(len(ours), len(theirs))
    )
    return (
        f"merges in common: {common:,} of {len(ours):,} ours / {len(theirs):,} hf; same order for the first {prefix:,}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data directory (default: %(default)s)")
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[4, 100], help="corpus sizes in MB")
    parser.add_argument("--vocab-size", type=int, default=50257, help="vocabulary incl. <|endoftext|>")
    parser.add_argument("--timeout-min", type=float, default=20, help="kill a side that runs longer than this")
    parser.add_argument("--sides", nargs="+", choices=["ours", "hf"], default=["ours", "hf"], help="what to run")
    parser.add_argument(
        "--distinct", action="store_true", help="rotate the letters of each repeat of the sources (more pre-tokens)"
    )
    parser.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--merges-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:
        return child(args.side, args.corpus, args.vocab_size, args.merges_out)
    if args.vocab_size < 257:
        fail("--vocab-size must be at least 257")

    data = args.data.resolve()
    missing = [rel for rel in SOURCES if not (data / rel).is_file()]
    if missing:
        fail(f"shared data not found under {data} (missing: {', '.join(missing)}); pass --data DIR")
    try:
        import tokenizers
    except ImportError:
        fail("Hugging Face `tokenizers` is not installed (pip install -e '.[bench]')")

    sys.stdout.reconfigure(line_buffering=True)
    docs = base_documents(data)
    distinct = sum(len(d.encode("utf-8")) for d in docs)
    print(f"python {platform.python_version()}, tokenizers {tokenizers.__version__}, cpus {os.cpu_count()}")
    print(f"sources: {len(docs):,} documents, {distinct:,} bytes of distinct text; vocab_size {args.vocab_size}")
    print(f"timeout per side: {args.timeout_min:g} min\n")

    rows: list[tuple[str, str, dict[str, Any]]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-bpe-train-") as tmp:
        for size in args.sizes_mb:
            corpus = Path(tmp) / f"corpus-{size:g}mb.jsonl"
            n_docs, n_bytes = write_corpus(docs, size, corpus, args.distinct)
            print(f"{size:g} MB corpus: {n_docs:,} documents, {n_bytes:,} bytes")
            results = {}
            for side in args.sides:
                merges_out = Path(tmp) / f"merges-{size:g}-{side}.txt"
                r = run_side(side, corpus, args.vocab_size, merges_out, args.timeout_min * 60)
                if "counted_bytes" in r and r["counted_bytes"] != n_bytes:
                    # Pre-tokens partition the text, so their bytes times their counts must add up to the corpus.
                    r["wrong"] = f"WRONG COUNTS: pre-tokens cover {r['counted_bytes']:,} bytes, corpus has {n_bytes:,}"
                results[side] = r
                rows.append((f"{size:g}", side, r))
                if "error" in r:
                    print(f"  {side}: {r['error']} ({r['process_s']:.1f} s)")
                else:
                    extra = ""
                    if side == "ours":
                        extra = (
                            f" (count {r['count_s']:.2f} s, merges {r['merge_s']:.2f} s, "
                            f"{r['distinct_pretokens']:,} distinct pre-tokens, {r['workers']} counting workers)"
                        )
                    memory = f"main RSS {r['peak_rss_mib']:.1f}, tree RSS {r['tree_rss_mib']:.1f}, "
                    memory += f"tree PSS {r['tree_pss_mib']:.1f} MiB"
                    print(f"  {side}: {r['wall_s']:.2f} s, {memory}, {r['merges']:,} merges{extra}")
                    if "wrong" in r:
                        print(f"  {side}: {r['wrong']}")
            if all(side in results and "error" not in results[side] for side in ("ours", "hf")):
                notes.append(
                    f"{size:g} MB: " + merges_overlap(*(Path(tmp) / f"merges-{size:g}-{s}.txt" for s in ("ours", "hf")))
                )
            corpus.unlink()

    print(
        f"\n{'size MB':>8} {'side':<5} {'wall s':>8} {'main RSS':>9} {'tree RSS':>9} {'tree PSS':>9} "
        f"{'merges':>8}  counts"
    )
    for size, side, r in rows:
        if "error" in r:
            print(f"{size:>8} {side:<5} {r['error']}")
        else:
            check = "WRONG" if "wrong" in r else "ok" if "counted_bytes" in r else "-"
            print(
                f"{size:>8} {side:<5} {r['wall_s']:>8.2f} {r['peak_rss_mib']:>9.1f} {r['tree_rss_mib']:>9.1f} "
                f"{r['tree_pss_mib']:>9.1f} {r['merges']:>8,}  {check}"
            )
    print("(memory in MiB)")
    print(f"\n{'size MB':>8} {'ours/hf: wall':>14} {'main RSS':>9} {'tree RSS':>9} {'tree PSS':>9}")
    for size in dict.fromkeys(size for size, _, _ in rows):
        ours = next((r for s, side, r in rows if s == size and side == "ours"), {})
        hf = next((r for s, side, r in rows if s == size and side == "hf"), {})
        if "wall_s" in ours and "wall_s" in hf:
            ratios = [ours[k] / hf[k] for k in ("wall_s", "peak_rss_mib", "tree_rss_mib", "tree_pss_mib")]
            print(f"{size:>8} {ratios[0]:>14.2f} {ratios[1]:>9.2f} {ratios[2]:>9.2f} {ratios[3]:>9.2f}")
        else:
            print(f"{size:>8} {'-':>14} {'-':>9} {'-':>9} {'-':>9}")
    for note in notes:
        print(note)
    if any("wrong" in r for _, _, r in rows):
        fail("ours counted the corpus wrongly (see above); its figures are not valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
