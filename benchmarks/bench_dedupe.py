"""Near-duplicate detection: gpt2cli's MinHash + LSH vs datasketch's MinHashLSH on the same planted-duplicate
corpus of real text.

Corpus: WikiText-2 paragraphs (test + valid) from ../shared/data/wikitext-2, at least 40 words each. A third of
them get a family of edited copies (random word replacements from the corpus vocabulary, deletions and
insertions) whose exact word-5-gram Jaccard to the original is tuned by bisection to targets from 0.3 to 0.95.
Ground truth: the exact Jaccard of every pair inside each family (distinct paragraphs share ~no 5-grams).

Both sides use the same 5-gram word shingles (`gpt2cli.dedupe.minhash.shingle_batch`), num_perm = 128 and the
same bands x rows (`lsh_params(threshold, 128)`, passed to datasketch as ``params=(b, r)``). The timed stage is
signatures + indexing + candidate queries, from the same input:

* ours: `MinHasher.signatures_csr` over the CSR shingle hashes, `LSHIndex.add`, `LSHIndex.candidate_pairs`;
  the exact-Jaccard verification of the candidates is timed separately (and in "ours+verify");
* datasketch (ints): `MinHash.bulk(..., hashfunc=identity)` over the same shingle hashes (low 32 bits, as
  datasketch's own hash gives), `MinHashLSH.insert` per document, then `MinHashLSH.query` per document;
* datasketch (sha1): the same with its default SHA-1 over the 5-gram strings (how it is usually run).

Shingling the text (tokenizing + hashing, ours) is timed on its own: it is the same work for every side.
Speed is documents/s, best of ``--repeats`` runs, one process. Precision: reported pairs whose exact Jaccard is
>= the threshold; recall: ground-truth pairs reported, at J >= 0.8 and in [threshold, 0.8).

Run from the repository root:

    .venv/bin/python benchmarks/bench_dedupe.py
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("GPT2_SHARED_DATA") or REPO.parent / "shared" / "data") / "wikitext-2"
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import regex  # noqa: E402

from gpt2cli.dedupe.minhash import (  # noqa: E402
    DEFAULT_THRESHOLD,
    LSHIndex,
    MinHasher,
    jaccard,
    lsh_params,
    shingle_batch,
    shingles,
)

WORD = regex.compile(r"\w+")
TARGETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def paragraphs(data: Path, min_words: int) -> list[str]:
    out = []
    for name in ("wiki.test.tokens", "wiki.valid.tokens"):
        for line in (data / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("=") and len(line.split()) >= min_words:
                out.append(line)
    return out


def edited(words: list[str], target: float, vocab: list[str], rng: random.Random) -> list[str]:
    """A copy of ``words`` with the number of random edits bisected so its 5-gram Jaccard is near ``target``."""
    base = shingles(" ".join(words))
    plan = [(rng.choice("rdi"), rng.random(), rng.choice(vocab)) for _ in range(len(words))]

    def apply(k: int) -> list[str]:
        out = list(words)
        for op, where, word in plan[:k]:
            i = int(where * len(out))
            if op == "r" and out:
                out[min(i, len(out) - 1)] = word
            elif op == "d" and len(out) > 1:
                del out[min(i, len(out) - 1)]
            else:
                out.insert(i, word)
        return out

    lo, hi = 1, len(plan)  # smallest k with J(k) <= target
    while lo < hi:
        mid = (lo + hi) // 2
        if jaccard(base, shingles(" ".join(apply(mid)))) <= target:
            hi = mid
        else:
            lo = mid + 1
    return apply(lo)


def build_corpus(data: Path, docs: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """Texts, and the families (lists of text indices) of planted near-duplicates."""
    rng = random.Random(seed)
    paras = paragraphs(data, 40)
    rng.shuffle(paras)
    vocab = [w for p in paras[:500] for w in p.split()]
    n_base = min(len(paras), docs // 2)
    texts = paras[:n_base]
    families = []
    for f in range(n_base // 3):
        words = texts[f].split()
        family = [f]
        for t in rng.sample(TARGETS, 3):
            family.append(len(texts))
            texts.append(" ".join(edited(words, t, vocab, rng)))
        families.append(family)
    return texts, families


def truth(families: list[list[int]], sets: list[np.ndarray]) -> dict[tuple[int, int], float]:
    return {(i, j): jaccard(sets[i], sets[j]) for fam in families for a, i in enumerate(fam) for j in fam[a + 1 :]}


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def ours(values: np.ndarray, offsets: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    sigs = MinHasher(128).signatures_csr(values, offsets)
    index = LSHIndex(bands, rows)
    index.add(np.arange(len(offsets) - 1), sigs)
    return set(index.candidate_pairs())


def datasketch_side(inputs: list[list], bands: int, rows: int, hashfunc: Callable | None) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    kwargs = {"num_perm": 128} if hashfunc is None else {"num_perm": 128, "hashfunc": hashfunc}
    minhashes = MinHash.bulk(inputs, **kwargs)
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    for i, m in enumerate(minhashes):
        lsh.insert(i, m)
    pairs = set()
    for i, m in enumerate(minhashes):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def identity(v: int) -> int:
    return v


def score(pairs: set[tuple[int, int]], gold: dict[tuple[int, int], float], sets: list[np.ndarray], t: float) -> str:
    exact = {p: gold[p] if p in gold else jaccard(sets[p[0]], sets[p[1]]) for p in pairs}
    precision = sum(j >= t for j in exact.values()) / max(len(pairs), 1)
    high = [p for p, j in gold.items() if j >= 0.8]
    near = [p for p, j in gold.items() if t <= j < 0.8]
    r_high = sum(p in pairs for p in high) / max(len(high), 1)
    r_near = sum(p in pairs for p in near) / max(len(near), 1)
    return f"precision(J>={t}) {precision:.4f}  recall(J>=0.8) {r_high:.4f}  recall({t}<=J<0.8) {r_near:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the wikitext-2 folder")
    parser.add_argument("--docs", type=int, default=4000, help="about this many documents")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "wiki.test.tokens").exists():
        sys.exit(f"bench_dedupe: {args.data}/wiki.test.tokens is absent; this benchmark needs WikiText-2 from "
                 "../shared/data (or --data DIR, or GPT2_SHARED_DATA)")  # fmt: skip

    t0 = time.perf_counter()
    texts, families = build_corpus(args.data, args.docs, args.seed)
    build_s = time.perf_counter() - t0
    n = len(texts)
    shingle_s, (values, offsets) = best_time(lambda: shingle_batch(texts), args.repeats)
    sets = [values[offsets[i] : offsets[i + 1]] for i in range(n)]
    gold = truth(families, sets)
    bands, rows = lsh_params(args.threshold, 128)
    n_shingles = len(values)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    print(f"corpus: {n} docs ({len(families)} planted families of 4), {n_shingles} distinct 5-grams "
          f"({n_shingles / n:.0f}/doc), {len(gold)} planted pairs: {sum(j >= 0.8 for j in gold.values())} "
          f"at J>=0.8, {sum(args.threshold <= j < 0.8 for j in gold.values())} in [{args.threshold}, 0.8); "
          f"built in {build_s:.1f}s")  # fmt: skip
    print(f"threshold {args.threshold}, num_perm 128, bands x rows = {bands} x {rows}; best of {args.repeats}")
    print(f"shingling (ours, text -> 5-gram hashes, shared input): {n / shingle_s:10.0f} docs/s")

    int_inputs = [(s & np.uint64(0xFFFFFFFF)).tolist() for s in sets]
    string_inputs = []  # the same 5-grams as strings: lower-cased \w+ words joined by spaces
    for t in texts:
        w = WORD.findall(t.lower())
        grams = {" ".join(w[i : i + 5]) for i in range(max(len(w) - 4, 1))}
        string_inputs.append([g.encode() for g in grams])

    t_ours, pairs_ours = best_time(lambda: ours(values, offsets, bands, rows), args.repeats)
    t_verify, verified = best_time(
        lambda: {p for p in pairs_ours if jaccard(sets[p[0]], sets[p[1]]) >= args.threshold}, args.repeats
    )
    t_ds, pairs_ds = best_time(lambda: datasketch_side(int_inputs, bands, rows, identity), args.repeats)
    t_sha, pairs_sha = best_time(lambda: datasketch_side(string_inputs, bands, rows, None), args.repeats)
    print(f"{'side':28s} {'docs/s':>10s} {'seconds':>8s} {'pairs':>7s}")
    rows_out = [
        ("ours (candidates)", t_ours, pairs_ours),
        ("ours+verify (exact Jaccard)", t_ours + t_verify, verified),
        ("datasketch (ints)", t_ds, pairs_ds),
        ("datasketch (sha1 strings)", t_sha, pairs_sha),
    ]
    for name, t, pairs in rows_out:
        print(f"{name:28s} {n / t:10.0f} {t:8.3f} {len(pairs):7d}  {score(pairs, gold, sets, args.threshold)}")
    print(f"speed ratio ours / datasketch (ints):   candidates {t_ds / t_ours:5.1f}x, with verification "
          f"{t_ds / (t_ours + t_verify):5.1f}x")  # fmt: skip
    print(f"speed ratio ours / datasketch (sha1):   candidates {t_sha / t_ours:5.1f}x, with verification "
          f"{t_sha / (t_ours + t_verify):5.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
