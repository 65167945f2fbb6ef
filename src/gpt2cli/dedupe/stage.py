"""The `gpt2 dedupe` stage: raw documents -> a clean, deduplicated corpus with a train/val split.

Steps, in order, each counted with examples: text normalization; per-document filters (Wikipedia, length,
language, quality); then duplicates among the survivors, exact (same normalized text) and near (MinHash
LSH over word 5-grams, every candidate verified by true Jaccard), grouped by connected components with
one keeper per group: the highest Reddit score, then the earliest document.

Incremental refresh: the corpus artifact carries the state of every document that passed the filters
(signature, shingles, verified duplicate pairs). A run with `--incremental` loads it, adds only the new
documents, verifies their candidate pairs, and recomputes the keepers over all groups — the same result as
a full recompute on the union, without re-hashing the old documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.artifacts import Artifact, Draft, Published, Store, artifact_input, file_input
from gpt2cli.console import progress
from gpt2cli.dedupe.bloom import BloomFilter, build_ngram_bloom, ngram_items, overlap_report
from gpt2cli.dedupe.filters import QualityConfig, language_reason, length_reason, quality_reason, wikipedia_reason
from gpt2cli.dedupe.minhash import LSHIndex, MinHasher, UnionFind, jaccard, lsh_params, shingles
from gpt2cli.dedupe.normalize import normalize_text, text_key
from gpt2cli.documents import expand_inputs
from gpt2cli.errors import Gpt2Error, UsageError

log = logging.getLogger(__name__)

CORPUS = "documents-00000.parquet"
STATE = "dedupe-state"
REPORT = "report.json"
BLOOM = "bloom-8gram.npz"
RAW_DOCS_COLUMNS = {"url", "text"}
EXAMPLES = 3


@dataclass(frozen=True)
class DedupeConfig:
    near_threshold: float = 0.5  # Jaccard of word 5-gram sets; OpenWebText's value (see README)
    num_perm: int = 128
    shingle_size: int = 5
    val_fraction: float = 0.05  # the paper's held-out WebText sample was 5%
    remove_wikipedia: bool = True
    language: str | None = "en"
    quality: QualityConfig = field(default_factory=QualityConfig)
    bloom: bool = False  # store an 8-gram Bloom filter of the corpus (paper section 4: overlap with eval sets)
    drop_overlap: float | None = None  # drop documents sharing more than this share of 8-grams with eval_bloom
    eval_bloom: str | None = None  # path of an 8-gram Bloom filter of evaluation sets (made by the stage)
    workers: int = 0  # processes for the per-document steps; 0 = all cores


@dataclass
class Doc:
    """One document that reached the duplicate steps, with what the output needs of it."""

    row: dict[str, Any]
    order: int
    score: int | None
    key: bytes
    shingles: np.ndarray


def split_of(url_or_text: str, val_fraction: float) -> str:
    """`val` for a stable share of documents, decided by the hash of the normalized URL: a refresh never
    moves a document between splits."""
    h = int.from_bytes(hashlib.blake2b(url_or_text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2**64 else "train"


class Report:
    """Per step: documents in, removed, and a few examples of what was removed and why."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def step(self, name: str, n_in: int) -> None:
        self.steps[name] = {"in": n_in, "removed": 0, "reasons": Counter(), "examples": []}

    def remove(self, name: str, reason: str, row: dict[str, Any], detail: str = "") -> None:
        entry = self.steps[name]
        entry["removed"] += 1
        entry["reasons"][reason] += 1
        if len(entry["examples"]) < EXAMPLES:
            snippet = " ".join(str(row.get("text", "")).split())[:160]
            entry["examples"].append({"url": row.get("url"), "reason": reason, "detail": detail, "text": snippet})

    def as_dict(self) -> dict[str, Any]:
        return {name: {**e, "reasons": dict(e["reasons"])} for name, e in self.steps.items()}


def _read_rows(
    store: Store, raw_refs: Sequence[str], inputs: Sequence[Path], stats: Counter[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows from raw-docs artifacts (their Parquet) or from --input JSONL/Parquet files with a text column."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    manifest_inputs: list[dict[str, Any]] = []
    if inputs:
        for path in expand_inputs([Path(p) for p in inputs]):
            manifest_inputs.append(file_input(path))
            rows += _file_rows(path, stats)
        return rows, manifest_inputs
    refs = list(raw_refs) or ["raw-docs"]
    for ref in refs:
        artifact = store.resolve(ref)
        if artifact.kind != "raw-docs":
            raise UsageError(f"{artifact.ref} is a {artifact.kind} artifact; dedupe reads raw-docs (or --input files)")
        path = artifact.file("documents.parquet")
        table = pq.read_table(path)
        missing = RAW_DOCS_COLUMNS - set(table.column_names)
        if missing:
            raise Gpt2Error(f"{artifact.ref}: unknown raw-docs schema (no {', '.join(sorted(missing))} column)")
        manifest_inputs.append(artifact_input(artifact))
        for row in table.to_pylist():
            row["raw_docs"] = artifact.ref
            rows.append(row)
    return rows, manifest_inputs


def _file_rows(path: Path, stats: Counter[str]) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise Gpt2Error(f"{path}: no 'text' column (columns: {table.column_names})")
        return [{**r, "raw_docs": str(path)} for r in table.to_pylist()]
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats["invalid_utf8"] += 1
                log.warning("%s:%d: not UTF-8; skipped", path, lineno)
                continue
            except json.JSONDecodeError:
                stats["malformed"] += 1
                continue
            if not isinstance(obj, dict):
                stats["malformed"] += 1
                continue
            rows.append({**obj, "raw_docs": str(path)})
    return rows


def dedupe(
    store: Store,
    *,
    raw_refs: Sequence[str],
    inputs: Sequence[Path],
    config: DedupeConfig,
    incremental: bool,
    eval_files: Sequence[Path] = (),
    force: bool = False,
    wait: bool = False,
) -> Published:
    stats: Counter[str] = Counter()
    rows, manifest_inputs = _read_rows(store, raw_refs, inputs, stats)
    if not rows:
        raise Gpt2Error("the input holds no documents")
    base = store.latest("corpus") if incremental else None
    if incremental and base is None:
        log.info("no previous corpus: --incremental starts a new one")
    if config.drop_overlap is not None and not eval_files:
        raise UsageError("--drop-overlap needs the evaluation files (--overlap FILE)")
    identity = {k: v for k, v in asdict(config).items() if k not in ("eval_bloom", "workers")}
    params = {"config": identity, "incremental": base.ref if base else None}
    if config.drop_overlap is not None:
        manifest_inputs = manifest_inputs + [file_input(p) for p in eval_files]

    def build(draft: Draft) -> dict[str, Any]:
        run_config = config
        if config.drop_overlap is not None:
            path = draft.work / "eval-8gram.npz"
            build_ngram_bloom(_eval_texts(eval_files), n=8, p=1e-8).save(path)
            run_config = replace(config, eval_bloom=str(path))
        return _build(draft.dir, rows, run_config, base, stats)

    return store.produce(
        "corpus", params=params, inputs=manifest_inputs, build=build, force=force, wait=wait, parent=base
    )


STEPS = ("normalize", "wikipedia", "length", "language", "contamination", "quality")


def _screen(rows: list[dict[str, Any]], config: DedupeConfig) -> list[tuple[str | None, str, str, np.ndarray | None]]:
    """Normalize and filter a batch of rows: per row, (step that removed it or None, reason, text, shingles).

    A pure function of the rows and the config, so batches can run in worker processes."""
    contamination = BloomFilter.load(Path(config.eval_bloom)) if config.eval_bloom else None
    out: list[tuple[str | None, str, str, np.ndarray | None]] = []
    for row in rows:
        raw = row.get("text")
        if not isinstance(raw, str) or not raw.strip():
            out.append(("normalize", "no_text", "", None))
            continue
        text = normalize_text(raw)
        removed = _first_reason(row, text, config, contamination)
        out.append((*removed, text, None) if removed else (None, "", text, shingles(text, config.shingle_size)))
    return out


def _first_reason(
    row: dict[str, Any], text: str, config: DedupeConfig, contamination: BloomFilter | None
) -> tuple[str, str] | None:
    """The first filter that rejects a document, in the order of STEPS, and its reason."""
    if config.remove_wikipedia and (reason := wikipedia_reason(row.get("url"), row.get("domain"))):
        return "wikipedia", reason
    if reason := length_reason(text, config.quality):
        return "length", reason
    if config.language and (reason := language_reason(text, config.language, config.quality)):
        return "language", reason
    if reason := _contamination_reason(text, contamination, config.drop_overlap):
        return "contamination", reason
    if reason := quality_reason(text, config.quality):
        return "quality", reason
    return None


def _contamination_reason(text: str, bloom: BloomFilter | None, threshold: float | None) -> str | None:
    """Drop a document when more than ``threshold`` of its 8-grams occur in an evaluation set (section 4)."""
    if bloom is None or threshold is None:
        return None
    items = ngram_items(text, 8)
    if not items:
        return None
    share = float(bloom.contains_many(items).mean())
    return f"contamination:{share:.2f}" if share > threshold else None


def _filter(
    rows: list[dict[str, Any]], config: DedupeConfig, report: Report, stats: Counter[str], first_order: int,
    workers: int = 1,
) -> list[Doc]:  # fmt: skip
    """Normalization and the per-document filters, on all cores; returns the documents for deduplication."""
    batches = [rows[i : i + 256] for i in range(0, len(rows), 256)]
    results: list[tuple[str | None, str, str, np.ndarray | None]] = []
    with progress("filtering", total=len(rows), unit="docs") as bar:
        if workers > 1 and len(batches) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                for batch, out in zip(batches, pool.map(_screen, batches, [config] * len(batches)), strict=True):
                    results += out
                    bar.advance(len(batch))
        else:
            for batch in batches:
                results += _screen(batch, config)
                bar.advance(len(batch))
    remaining = len(rows)
    removed_at = Counter(step for step, *_ in results if step)
    for name in STEPS:
        report.step(name, remaining)
        remaining -= removed_at[name]
    docs: list[Doc] = []
    for row, (step, reason, text, shingle_hashes) in zip(rows, results, strict=True):
        if text:
            row["text"] = text
        if step is not None:
            report.remove(step, reason, row)
            continue
        score = row.get("score")
        docs.append(Doc(row, first_order + len(docs), score if isinstance(score, int) else None, text_key(text),
                        shingle_hashes))  # type: ignore[arg-type]  # fmt: skip
    return docs


def _build(
    out: Path, rows: list[dict[str, Any]], config: DedupeConfig, base: Artifact | None, stats: Counter[str]
) -> dict[str, Any]:
    report = Report()
    old_docs, old_sigs, old_edges = _load_state(base) if base is not None else ([], None, [])
    workers = config.workers or os.cpu_count() or 1
    new_docs = _filter(rows, config, report, stats, first_order=len(old_docs), workers=workers)
    if base is not None:
        known = {d.row.get("url") for d in old_docs if d.row.get("url")}
        fresh = [d for d in new_docs if not d.row.get("url") or d.row["url"] not in known]
        stats["already_in_corpus"] = len(new_docs) - len(fresh)
        new_docs = fresh
    docs = old_docs + new_docs
    hasher = MinHasher(config.num_perm)
    new_sigs = (
        hasher.signatures([d.shingles for d in new_docs]) if new_docs else np.zeros((0, config.num_perm), np.uint64)
    )
    signatures = new_sigs if old_sigs is None else np.concatenate([old_sigs, new_sigs.astype(old_sigs.dtype)])
    bands, rows_per_band = lsh_params(config.near_threshold, config.num_perm)
    index = LSHIndex(bands, rows_per_band)
    index.add(list(range(len(docs))), signatures)
    edges = set(map(tuple, old_edges))
    first_new = len(old_docs)
    # exact duplicates: same normalized text; near duplicates: verified LSH candidates
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_key[d.key].append(i)
    exact = {(ids[0], j) for ids in by_key.values() for j in ids[1:] if j >= first_new}
    for i, j in index.candidate_pairs():
        a, b = min(i, j), max(i, j)
        if b < first_new or (a, b) in edges:
            continue  # both old: verified in an earlier run
        if jaccard(docs[a].shingles, docs[b].shingles) >= config.near_threshold:
            edges.add((a, b))
    groups = UnionFind(len(docs))
    for a, b in edges | exact:
        groups.union(a, b)
    keepers, removed_by = _keepers(groups, docs)
    report.step("exact_duplicates", len(docs))
    report.step(
        "near_duplicates", len(docs) - sum(1 for i in range(len(docs)) if removed_by.get(i, (None, ""))[1] == "exact")
    )
    for i, (keeper, kind) in sorted(removed_by.items()):
        report.remove(f"{kind}_duplicates", f"{kind} duplicate of {docs[keeper].row.get('url') or keeper}", docs[i].row)
    kept = [docs[i] for i in range(len(docs)) if i in keepers]
    n_written = _write_corpus(out / CORPUS, kept, config.val_fraction)
    _save_state(out / STATE, docs, signatures, sorted(edges))
    if config.bloom:
        bloom = build_ngram_bloom([d.row["text"] for d in kept], n=8, p=1e-8)
        bloom.save(out / BLOOM)
    (out / REPORT).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    splits = Counter(split_of(d.row.get("url") or d.row["text"], config.val_fraction) for d in kept)
    summary: dict[str, Any] = {
        "documents_in": len(rows),
        "documents": n_written,
        "train_documents": splits["train"],
        "val_documents": splits["val"],
        **{f"removed_{name}": e["removed"] for name, e in report.steps.items()},
        **{k: v for k, v in stats.items() if k != "filtered_in"},
        "lsh_bands": bands,
        "lsh_rows": rows_per_band,
    }
    if n_written == 0:
        raise Gpt2Error("every document was removed; see the report (is the input English text?)")
    return summary


def _keepers(groups: UnionFind, docs: list[Doc]) -> tuple[set[int], dict[int, tuple[int, str]]]:
    """One keeper per group: the highest score (unknown counts lowest), then the earliest document."""
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(docs)):
        members[groups.find(i)].append(i)
    keepers: set[int] = set()
    removed: dict[int, tuple[int, str]] = {}
    for ids in members.values():
        best = min(ids, key=lambda i: (-(docs[i].score if docs[i].score is not None else -(2**62)), docs[i].order))
        keepers.add(best)
        for i in ids:
            if i != best:
                removed[i] = (best, "exact" if docs[i].key == docs[best].key else "near")
    return keepers, removed


def _write_corpus(path: Path, kept: list[Doc], val_fraction: float) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "text": d.row["text"],
            "url": d.row.get("url"),
            "domain": d.row.get("domain"),
            "title": d.row.get("title"),
            "score": d.score,
            "raw_docs": d.row.get("raw_docs"),
            "split": split_of(d.row.get("url") or d.row["text"], val_fraction),
        }
        for d in sorted(kept, key=lambda d: d.order)
    ]
    schema = pa.schema([("text", pa.string()), ("url", pa.string()), ("domain", pa.string()), ("title", pa.string()),
                        ("score", pa.int64()), ("raw_docs", pa.string()), ("split", pa.string())])  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return len(rows)


def _save_state(directory: Path, docs: list[Doc], signatures: np.ndarray, edges: list[tuple[int, int]]) -> None:
    """Everything an incremental run needs: the documents that passed the filters, their signatures,
    shingles (to verify new candidate pairs) and the duplicate pairs already verified."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir()
    offsets = np.cumsum([0] + [len(d.shingles) for d in docs])
    values = np.concatenate([d.shingles for d in docs]) if docs else np.zeros(0, np.uint64)
    np.savez(directory / "state.npz", signatures=signatures, shingle_values=values, shingle_offsets=offsets,
             edges=np.asarray(edges, dtype=np.int64).reshape(-1, 2))  # fmt: skip
    table = pa.Table.from_pylist([{"row": json.dumps(d.row, ensure_ascii=False, default=str), "order": d.order,
                                   "score": d.score, "key": d.key} for d in docs])  # fmt: skip
    pq.write_table(table, directory / "docs.parquet")


def _load_state(base: Artifact) -> tuple[list[Doc], np.ndarray, list[tuple[int, int]]]:
    import pyarrow.parquet as pq

    directory = base.path / STATE
    if not (directory / "state.npz").is_file():
        raise Gpt2Error(f"{base.ref} has no deduplication state; rebuild it without --incremental")
    state = np.load(directory / "state.npz", allow_pickle=False)
    offsets, values = state["shingle_offsets"], state["shingle_values"]
    docs = [
        Doc(json.loads(r["row"]), r["order"], r["score"], r["key"], values[offsets[i] : offsets[i + 1]])
        for i, r in enumerate(pq.read_table(directory / "docs.parquet").to_pylist())
    ]
    return docs, state["signatures"], [tuple(e) for e in state["edges"].tolist()]


def _eval_texts(files: Sequence[Path]) -> list[str]:
    texts = []
    for path in files:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read eval file {path}: {e}") from None
        if str(path).endswith(".jsonl"):
            texts += [json.loads(line).get("text", "") for line in raw.splitlines() if line.strip()]
        else:
            texts.append(raw)
    return texts


def overlap_table(corpus: Artifact, files: Sequence[Path]) -> list[dict[str, Any]]:
    """Table 6 of the paper: the share of each eval file's 8-grams found in the corpus's Bloom filter."""
    if not (corpus.path / BLOOM).is_file():
        raise Gpt2Error(f"{corpus.ref} has no 8-gram Bloom filter; rebuild it with --overlap")
    bloom = BloomFilter.load(corpus.path / BLOOM)
    return [{"file": str(path), **overlap_report(bloom, _eval_texts([path]))} for path in files]


def iter_corpus_texts(artifact: Artifact) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(artifact.file(CORPUS)).iter_batches(columns=["text"]):
        yield from batch.column(0).to_pylist()
