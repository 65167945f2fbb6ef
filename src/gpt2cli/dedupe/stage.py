"""The `gpt2 dedupe` stage: raw documents -> a clean, deduplicated corpus with a train/val split.

Steps, in order, each counted with examples: text normalization; per-document filters (Wikipedia, length,
language, quality); then duplicates among the survivors, exact (same normalized text) and near (MinHash
LSH over word 5-grams, every candidate verified by true Jaccard), grouped by connected components with
one keeper per group: the highest Reddit score, then the earliest document.

Incremental refresh: the corpus artifact carries the state of every document that passed the filters
(signature, shingles, verified duplicate pairs) and its history (every input added so far). A run with
`--incremental` loads it, adds only the new documents, verifies their candidate pairs, and recomputes the keepers
over all groups — the same result as a full recompute on the union, without re-hashing the old documents. When it
cannot continue the corpus (other settings, a state an older release wrote) or must not reuse it (--force, an
--overlap filter it lacks), it makes that full recompute, from every input the corpus was built from and this
run's. The newest corpus alone is enough for either: `gpt2 artifacts gc` may remove the versions it continues.

This module runs the steps and finds the duplicates; its parts read alone: config.py (the options), screen.py
(the per-document steps, and shards), state.py (what a run leaves for the next), incremental.py (continuing a
corpus) and corpus.py (the corpus's files).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.artifacts import Artifact, Draft, Published, Store, artifact_input, file_input
from gpt2cli.console import json_utf8
from gpt2cli.dedupe.bloom import BloomFilter, build_ngram_bloom, overlap_report
from gpt2cli.dedupe.config import DedupeConfig
from gpt2cli.dedupe.corpus import BLOOM, CORPUS, CorpusTexts, CorpusWriter
from gpt2cli.dedupe.incremental import (
    HISTORY,
    History,
    all_inputs,
    corpus_history,
    input_key,
    latest_corpus,
    shard_documents,
    why_recompute,
    without_superseded,
)
from gpt2cli.dedupe.minhash import LSHIndex, UnionFind, choose_keepers, jaccard, lsh_params
from gpt2cli.dedupe.normalize import normalize_text
from gpt2cli.dedupe.screen import SHARD_KIND, STEPS, Report, Shard, check_shards, input_sources, screen_all
from gpt2cli.dedupe.state import STATE, Doc, State, StateWriter, open_state
from gpt2cli.documents import JSONL_SUFFIXES, Malformed, read_records
from gpt2cli.errors import Gpt2Error, UsageError

log = logging.getLogger(__name__)

REPORT = "report.json"


def split_of(url_or_text: str, val_fraction: float) -> str:
    """`val` for a stable share of documents, decided by the hash of the normalized URL: a refresh never
    moves a document between splits."""
    h = int.from_bytes(hashlib.blake2b(url_or_text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2**64 else "train"


def dedupe(
    store: Store,
    *,
    raw_refs: Sequence[str],
    inputs: Sequence[Path],
    config: DedupeConfig,
    incremental: bool,
    eval_files: Sequence[Path] = (),
    shard: Shard | None = None,
    merge: Sequence[str] = (),
    force: bool = False,
    wait: bool = False,
) -> Published:
    """The `gpt2 dedupe` stage. With ``shard``, screen one shard of the input into a `dedupe-shard` artifact
    (normalization, filters, shingles, signatures: the per-document work); with ``merge``, join such shards
    into the corpus (duplicate detection and output). Without either, both in one run."""
    config.validate()
    if config.drop_overlap is not None and not eval_files:
        raise UsageError("--drop-overlap needs the evaluation files (--overlap FILE)")
    _eval_texts(eval_files)  # a bad eval file fails now, not after the corpus is published
    identity: dict[str, Any] = {k: v for k, v in asdict(config).items() if k not in ("eval_bloom", "workers")}
    if config.drop_overlap is not None:  # the contamination filter removes what these files hold: a setting
        identity["drop_overlap_files"] = sorted(file_input(p)["sha256"] for p in eval_files)
    if merge:
        if raw_refs or inputs or shard:
            raise UsageError("--merge takes dedupe-shard artifacts only: no --raw-docs, --input or --shards with it")
        shards = check_shards([store.resolve(ref, SHARD_KIND, option="--merge") for ref in merge], identity)
        manifest_inputs = [artifact_input(a) for a in shards]
    else:
        sources, data_inputs = input_sources(store, raw_refs, inputs)
        eval_inputs = [file_input(p) for p in eval_files] if config.drop_overlap is not None else []
        manifest_inputs = data_inputs + eval_inputs
    if shard is not None:
        params = {"config": identity, "shards": shard.count, "shard_index": shard.index}

        def build_shard(draft: Draft) -> dict[str, Any]:
            screened = screen_all(draft.dir / STATE, sources, _run_config(config, eval_files, draft), shard)
            return {k: v for k, v in screened.items() if k != "report"}

        return store.produce(SHARD_KIND, params=params, inputs=manifest_inputs, build=build_shard, force=force,
                             wait=wait)  # fmt: skip
    # the corpus to continue is chosen under the lock its successor is published under: a run that waited for
    # another must continue what that one published, not what was current when it started
    with store.lock("corpus", wait=wait):
        base = latest_corpus(store) if incremental else None
        if incremental and base is None:
            log.info("no previous corpus: --incremental starts a new one")
        history = History()
        if base is not None:
            history = corpus_history(store, base)
            consumed = set(history.consumed)
            nothing_new = all(input_key(i) in consumed for i in manifest_inputs)
            if why := why_recompute(base, identity, config, force=force, nothing_new=nothing_new):
                if merge:
                    raise UsageError(f"{why}; --merge cannot recompute it: merge without --incremental")
                log.warning("%s: recomputing the corpus from every input of %s and this run's", why, base.ref)
                sources, data_inputs = all_inputs(store, base, history, why, sources, data_inputs)
                manifest_inputs = data_inputs + eval_inputs
                base, history = None, History()
            elif nothing_new:
                log.info("nothing new: %s already holds every input; reusing it", base.ref)
                store.mark_current(base)
                return Published(base, reused=True)
        documents, unknown = shard_documents(store, shards) if merge else (data_inputs, "")
        history = without_superseded(store, history.adding(manifest_inputs, documents, unknown), documents or [])
        params = {"config": identity, "incremental": base.ref if base else None}
        if merge:
            params["shards"] = len(merge)

        def build(draft: Draft) -> dict[str, Any]:
            if merge:
                parts = [a.path / STATE for a in shards]
            else:
                screen_all(draft.work / STATE, sources, _run_config(config, eval_files, draft), Shard())
                parts = [draft.work / STATE]
            summary = _deduplicate(draft.dir, parts, config, base)
            (draft.dir / STATE / HISTORY).write_bytes(json_utf8(asdict(history)))
            return summary

        retains = [e for e in history.documents or () if "ref" in e]  # what a recompute reads: gc keeps them
        return store.produce(
            "corpus", params=params, inputs=manifest_inputs, build=build, force=force, wait=wait, parent=base,
            retains=retains,
        )  # fmt: skip


def _run_config(config: DedupeConfig, eval_files: Sequence[Path], draft: Draft) -> DedupeConfig:
    if config.drop_overlap is None:
        return config
    path = draft.work / "eval-8gram.npz"
    build_ngram_bloom([normalize_text(t) for t in _eval_texts(eval_files)], n=8, p=1e-8).save(path)  # as documents
    return replace(config, eval_bloom=str(path))


# -- duplicates: exact and near, over the screened documents of every part ---------------------------------


def _deduplicate(out: Path, parts: Sequence[Path], config: DedupeConfig, base: Artifact | None) -> dict[str, Any]:
    """Join the screened parts (and the previous corpus's state, incrementally), find duplicates, keep one
    document per group, and write the corpus and its new state. Memory: per document, its signature, its
    metadata and its shingles' offset; shingles are memory-mapped, texts streamed."""
    old = open_state(base.path / STATE, base.ref) if base is not None else None
    screened = [open_state(p, str(p)) for p in parts]
    report, stats, n_rows = Report(), Counter[str](), 0
    for part in screened:
        report.absorb(part.screen["report"])
        stats.update(part.screen["stats"])
        n_rows += part.screen["documents_in"]
    for name in STEPS:  # the parts' "in" counts add up; recompute them from the totals
        report.step(name, n_rows - sum(report.steps[s]["removed"] for s in STEPS[: STEPS.index(name)]))
    offset = (old.docs[-1].order + 1) if old is not None and old.docs else 0
    # new documents of all parts in input order; (part, index in part) for each
    fresh = sorted(((d.order, p, i) for p, part in enumerate(screened) for i, d in enumerate(part.docs)))
    old_docs = old.docs if old is not None else []
    new_docs = [replace(screened[p].docs[i], order=offset + o) for o, p, i in fresh]
    docs = old_docs + new_docs
    new_sigs = np.zeros((len(fresh), config.num_perm), np.uint32)
    for k, (_, p, i) in enumerate(fresh):
        new_sigs[k] = screened[p].signatures[i]
    signatures = new_sigs if old is None else np.concatenate([old.signatures.astype(np.uint32), new_sigs])
    edges = _duplicate_edges(docs, signatures, set(old.edges) if old else set(), len(old_docs), config)
    groups = UnionFind(len(docs))
    for a, b in edges:
        groups.union(a, b)
    keepers, removed_by = _keepers(groups, docs)
    removed_as = Counter(kind for _, kind in removed_by.values())
    report.step("exact_duplicates", len(docs))
    report.step("url_duplicates", len(docs) - removed_as["exact"])
    report.step("near_duplicates", len(docs) - removed_as["exact"] - removed_as["url"])
    for i, (keeper, kind) in sorted(removed_by.items()):
        d = docs[i]
        report.remove(f"{kind}_duplicates", f"{kind} duplicate of {docs[keeper].url or keeper}", d.url, d.snippet)
    # the rows, streamed in order: the old corpus's documents, then the new ones of every part
    wanted = {(p, i): k for k, (_, p, i) in enumerate(fresh, start=len(old_docs))}

    def numbered(state: State, part: int, shift: int) -> Iterator[tuple[int, int, int, str]]:
        for i, (order, row) in enumerate(state.rows()):
            yield order + shift, part, i, row

    streams = [numbered(part, p, offset) for p, part in enumerate(screened)]
    if old is not None:
        streams.insert(0, numbered(old, -1, 0))

    def ordered_rows() -> Iterator[tuple[int, str]]:
        for _, p, i, row in heapq.merge(*streams):
            k = i if p < 0 else wanted.get((p, i))
            if k is not None:
                yield k, row

    writer = StateWriter(out / STATE, config.num_perm)
    n_written = 0
    splits: Counter[str] = Counter()
    with CorpusWriter(out / CORPUS) as corpus:
        for k, row_json in ordered_rows():
            writer.add(row_json, docs[k], signatures[k])
            if k in keepers:
                row = json.loads(row_json)
                split = split_of(row.get("url") or row["text"], config.val_fraction)
                corpus.add(row, docs[k].score, split)
                splits[split] += 1
                n_written += 1
    writer.close(sorted(edges), {"documents_in": n_rows, "stats": {}, "report": {}})
    if n_written == 0:
        raise Gpt2Error(_nothing_left(n_rows, stats, report, config))
    if config.bloom:
        # the training split's: Table 6 measures what a model trained on the corpus has seen
        build_ngram_bloom(CorpusTexts(out / CORPUS, "train"), n=8, p=1e-8).save(out / BLOOM)
    (out / REPORT).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    bands, rows_per_band = lsh_params(config.near_threshold, config.num_perm, config.lsh_recall)
    before = base.summary.get("documents", 0) if base is not None else 0
    return {
        "documents_in": n_rows,
        "documents": n_written,
        "documents_added": n_written - before if isinstance(before, int) else None,
        "train_documents": splits["train"],
        "val_documents": splits["val"],
        **{f"removed_{name}": e["removed"] for name, e in report.steps.items()},
        **dict(stats),
        "lsh_bands": bands,
        "lsh_rows": rows_per_band,
    }


def _nothing_left(n_rows: int, stats: Counter[str], report: Report, config: DedupeConfig) -> str:
    """Why the corpus would be empty, in the message itself: no corpus (and so no report) is published."""
    if n_rows == 0:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.items()) if n)
        return "no documents: no records read from the input" + (f" (skipped: {skipped})" if skipped else "")
    why = {
        "normalize": "empty",
        "wikipedia": "Wikipedia (--keep-wikipedia keeps it)",
        "length": f"the length filter (--min-words {config.quality.min_words})",
        "language": f"the language filter (--language {config.language})",
        "contamination": f"overlap with the eval files (--drop-overlap {config.drop_overlap})",
        "quality": "the quality rules",
    }
    removed = ", ".join(f"{e['removed']} by {why.get(name, name)}" for name, e in report.steps.items() if e["removed"])
    return f"all {n_rows} documents read were removed: {removed}"


def _duplicate_edges(
    docs: list[Doc], signatures: np.ndarray, old_edges: set[tuple[int, int]], first_new: int, config: DedupeConfig
) -> set[tuple[int, int]]:
    """Pairs of duplicates: the old verified pairs, new exact pairs (same key), pairs of one URL (a page fetched
    again, perhaps edited: the corpus holds one version of it, chosen as any duplicate is; every pair, since a
    corpus of an older release may hold a URL twice) and new LSH candidates whose true Jaccard reaches the
    threshold (a pair of two old documents was verified in an earlier run)."""
    edges = set(old_edges)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_key[d.key].append(i)
    edges |= {(ids[0], j) for ids in by_key.values() for j in ids[1:] if j >= first_new}
    # one text, one entry in the index: its copies are joined to it above and share its shingles, so they add no
    # group, only pairs (2,000 copies of one text made two million, checked one by one)
    firsts = np.array(sorted(ids[0] for ids in by_key.values()), dtype=np.int64)
    bands, rows_per_band = lsh_params(config.near_threshold, config.num_perm, config.lsh_recall)
    index = LSHIndex(bands, rows_per_band)
    index.add(firsts, signatures[firsts])
    by_url: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        if d.url:
            by_url[d.url].append(i)
    edges |= {(ids[0], j) for ids in by_url.values() for j in ids[1:]}
    for i, j in index.candidate_pairs():
        a, b = min(i, j), max(i, j)
        if b < first_new or (a, b) in edges:
            continue
        if jaccard(docs[a].shingles, docs[b].shingles) >= config.near_threshold:
            edges.add((a, b))
    return edges


def _keepers(groups: UnionFind, docs: list[Doc]) -> tuple[set[int], dict[int, tuple[int, str]]]:
    """One keeper per group (`choose_keepers`: the highest score, unknown lowest, then the earliest), and for
    every other member the keeper it duplicates and how: exactly (same text), by URL, or nearly."""
    clusters = groups.groups(min_size=2)
    chosen = choose_keepers(clusters, [d.score for d in docs], [d.order for d in docs])
    removed: dict[int, tuple[int, str]] = {}
    for cluster in clusters:
        best = next(i for i in cluster if i in chosen)
        for i in cluster:
            if i != best:
                same_url = docs[i].url is not None and docs[i].url == docs[best].url
                removed[i] = (best, "exact" if docs[i].key == docs[best].key else "url" if same_url else "near")
    return set(range(len(docs))) - removed.keys(), removed


def _eval_texts(files: Sequence[Path]) -> list[str]:
    """The texts of evaluation files: each JSONL/NDJSON record's ``text``, any other file whole. A missing file
    is a usage error and a malformed record bad data, never skipped: an overlap measured on part of an
    evaluation set would pass for the whole."""
    texts = []
    for path in map(Path, files):
        if not path.is_file():
            raise UsageError(f"cannot read eval file {path}: no such file")
        if path.suffix.lower() in JSONL_SUFFIXES:
            for _, _, row in read_records([path]):
                if isinstance(row, Malformed) or not isinstance(row.get("text"), str):
                    where = row.where if isinstance(row, Malformed) else path
                    raise Gpt2Error(f"eval file {where}: a record is not a JSON object with a 'text' string")
                texts.append(row["text"])
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read eval file {path}: {e}") from None
    return texts


def overlap_table(corpus: Artifact, files: Sequence[Path]) -> list[dict[str, Any]]:
    """Table 6 of the paper: the share of each eval file's 8-grams found in the corpus's Bloom filter."""
    if not (corpus.path / BLOOM).is_file():
        raise Gpt2Error(f"{corpus.ref} has no 8-gram Bloom filter; rebuild it with --overlap")
    bloom = BloomFilter.load(corpus.path / BLOOM)
    return [{"file": str(path), **overlap_report(bloom, _eval_texts([path]))} for path in files]
