"""The per-document half of the stage: each document is read, normalized, filtered, shingled and signed without
looking at any other, so this work runs on every core, or in shards on other machines (`--shards`) that a merge
checks and joins. Duplicate detection, which needs every document, is the stage's."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.artifacts import Artifact, Store, artifact_input
from gpt2cli.console import progress
from gpt2cli.dedupe.bloom import BloomFilter, ngram_items
from gpt2cli.dedupe.config import DedupeConfig
from gpt2cli.dedupe.filters import language_reason, length_reason, quality_reason, wikipedia_reason
from gpt2cli.dedupe.minhash import MinHasher, shingles
from gpt2cli.dedupe.normalize import normalize_text, text_key
from gpt2cli.dedupe.state import Doc, StateWriter
from gpt2cli.documents import Malformed, document_input, expand_inputs, read_records
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.textutil import utf8_name, valid_unicode_in
from gpt2cli.workers import usable_workers, worker_pool

DOCUMENTS = "documents.parquet"  # a raw-docs version's file
RAW_DOCS_COLUMNS = {"url", "text"}
EXAMPLES = 3
SHARD_KIND = "dedupe-shard"


@dataclass(frozen=True)
class Shard:
    """Which part of the input a run screens: records ``i`` with ``i % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard-index must be in [0, --shards), got {self.index} of {self.count}")

    def owns(self, record: int) -> bool:
        return record % self.count == self.index


def check_shards(artifacts: list[Artifact], identity: dict[str, Any]) -> list[Artifact]:
    """The shards of one input, each once, all made with this configuration."""
    params = [a.manifest["params"] for a in artifacts]
    count = params[0]["shards"]
    if sorted(p["shard_index"] for p in params) != list(range(count)) or any(p["shards"] != count for p in params):
        found = ", ".join(f"{p['shard_index']}/{p['shards']}" for p in params)
        raise UsageError(f"--merge needs shards 0..{count - 1} of {count}, each once; got {found}")
    if any(json.dumps(p["config"], sort_keys=True) != json.dumps(identity, sort_keys=True) for p in params):
        raise UsageError("the shards were screened with other dedupe settings than this merge's; use the same options")
    if len({json.dumps(a.manifest["inputs"], sort_keys=True) for a in artifacts}) > 1:
        raise UsageError("the shards were screened from different inputs")
    return sorted(artifacts, key=lambda a: a.manifest["params"]["shard_index"])


class Report:
    """Per step: documents in, removed, and a few examples of what was removed and why."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def _entry(self, name: str) -> dict[str, Any]:
        return self.steps.setdefault(name, {"in": 0, "removed": 0, "reasons": Counter(), "examples": []})

    def step(self, name: str, n_in: int) -> None:
        self._entry(name)["in"] = n_in

    def remove(self, name: str, reason: str, url: str | None, text: str, detail: str = "") -> None:
        entry = self._entry(name)
        entry["removed"] += 1
        entry["reasons"][reason] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append({"url": url, "reason": reason, "detail": detail, "text": _snippet(text)})

    def absorb(self, steps: dict[str, dict[str, Any]]) -> None:
        """Add another run's counts (a shard's), keeping the first examples."""
        for name, other in steps.items():
            entry = self._entry(name)
            entry["removed"] += other["removed"]
            entry["reasons"].update(other["reasons"])
            entry["examples"] = (entry["examples"] + other["examples"])[:EXAMPLES]

    def as_dict(self) -> dict[str, Any]:
        return {name: {**e, "reasons": dict(e["reasons"])} for name, e in self.steps.items()}


def _snippet(text: str) -> str:
    return " ".join(text[:400].split())[:160]


# -- reading the input, one record at a time ----------------------------------------------------------


def input_sources(
    store: Store, raw_refs: Sequence[str], inputs: Sequence[Path]
) -> tuple[list[tuple[Path, str]], list[dict[str, Any]]]:
    """(file, provenance) pairs to read, and their manifest inputs: raw-docs artifacts or --input files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if inputs:
        paths = expand_inputs([Path(p) for p in inputs])
        return [(path, str(path)) for path in paths], [document_input(path) for path in paths]
    sources, manifest_inputs = [], []
    for ref in list(raw_refs) or ["raw-docs"]:
        artifact = store.resolve(ref, "raw-docs", option="--raw-docs")
        path = artifact.file(DOCUMENTS)
        try:
            with open(path, "rb") as f:  # a file object: pyarrow refuses a path that is not UTF-8
                missing = RAW_DOCS_COLUMNS - set(pq.read_schema(f).names)
        except (pa.ArrowException, OSError) as e:
            raise Gpt2Error(f"{artifact.ref}: {path} is not a readable Parquet file ({e})") from None
        if missing:
            raise Gpt2Error(f"{artifact.ref}: unknown raw-docs schema (no {', '.join(sorted(missing))} column)")
        sources.append((path, artifact.ref))
        manifest_inputs.append(artifact_input(artifact))
    return sources, manifest_inputs


def _records(sources: Sequence[tuple[Path, str]], shard: Shard, stats: Counter[str]) -> Iterator[tuple[int, dict]]:
    """(record number, row) of the records this shard owns, streamed; malformed records it owns are counted
    in ``stats`` and skipped (every record is numbered, so the shards' counts add up to the whole)."""
    provenance = {path: utf8_name(source) for path, source in sources}  # a Parquet string column: valid UTF-8
    for record, path, row in read_records([path for path, _ in sources], owns=shard.owns):
        if isinstance(row, Malformed) or not _well_formed(row):
            stats[row.reason if isinstance(row, Malformed) else "malformed"] += 1
            continue
        try:  # lone surrogates (JSON escapes) in any field: no UTF-8 column or report could hold them
            row = valid_unicode_in(row)
        except RecursionError:
            stats["malformed"] += 1
            continue
        yield record, {**row, "raw_docs": provenance[path]}


def _well_formed(row: dict[str, Any]) -> bool:
    """The text fields the stage reads and writes are strings or absent (a missing text makes an empty record,
    counted by the normalize step): the filters and the corpus's string columns take nothing else."""
    return all(row.get(name) is None or isinstance(row[name], str) for name in ("text", "url", "domain", "title"))


def _score(value: Any) -> int | None:
    """A score the corpus's int64 column holds, else unknown (a string, a float, a bool, a number too large)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


# -- screening: the per-document steps, streamed ------------------------------------------------------------


STEPS = ("normalize", "wikipedia", "length", "language", "contamination", "quality")
BATCH_DOCS = 256


def screen_all(
    state_dir: Path, sources: Sequence[tuple[Path, str]], config: DedupeConfig, shard: Shard
) -> dict[str, Any]:
    """Normalize, filter, shingle and sign this shard's records on all cores into ``state_dir``. Memory holds
    a few batches of records in flight plus one signature (4 bytes per permutation) and one offset per
    document kept; texts and shingles go to disk as they come."""
    stats: Counter[str] = Counter()
    report = Report()
    writer = StateWriter(state_dir, config.num_perm)
    workers = usable_workers(config.workers)
    removed_at: Counter[str] = Counter()
    n_in = 0

    def batches() -> Iterator[list[tuple[int, dict[str, Any]]]]:
        batch: list[tuple[int, dict[str, Any]]] = []
        for item in _records(sources, shard, stats):
            batch.append(item)
            if len(batch) == BATCH_DOCS:
                yield batch
                batch = []
        if batch:
            yield batch

    def consume(batch: list[tuple[int, dict[str, Any]]], results: list[Any]) -> None:
        nonlocal n_in
        n_in += len(batch)
        for (record, row), (step, reason, text, shingle_hashes, signature) in zip(batch, results, strict=True):
            url = row.get("url")
            if step is not None:
                removed_at[step] += 1
                report.remove(step, reason, url, text or str(row.get("text") or ""))
                continue
            row["text"] = text
            doc = Doc(record, _score(row.get("score")), text_key(text), url, _snippet(text), shingle_hashes)
            writer.add(json.dumps(row, ensure_ascii=False, default=str), doc, signature)

    with progress("screening", unit="docs") as bar:
        if workers > 1:
            with worker_pool(workers) as pool:
                pending: list[tuple[list[Any], Any]] = []
                for batch in batches():
                    pending.append((batch, pool.submit(_screen, [row for _, row in batch], config)))
                    if len(pending) > 2 * workers:  # keep the workers fed, and the batches in flight few
                        done, future = pending.pop(0)
                        consume(done, future.result())
                        bar.advance(len(done))
                for done, future in pending:
                    consume(done, future.result())
                    bar.advance(len(done))
        else:
            for batch in batches():
                consume(batch, _screen([row for _, row in batch], config))
                bar.advance(len(batch))
    remaining = n_in
    for name in STEPS:
        report.step(name, remaining)
        remaining -= removed_at[name]
    screen = {"documents_in": n_in, "stats": dict(stats), "report": report.as_dict(), "shard": asdict(shard)}
    writer.close([], screen)
    return {"documents_in": n_in, "documents_screened_in": remaining, **dict(stats), "report": report.as_dict()}


def _screen(
    rows: list[dict[str, Any]], config: DedupeConfig
) -> list[tuple[str | None, str, str, np.ndarray | None, np.ndarray | None]]:
    """Normalize, filter, shingle and sign a batch of rows: per row, (step that removed it or None, reason,
    text, shingles, signature). A pure function of the rows and the config, so batches run in workers."""
    contamination = BloomFilter.load(Path(config.eval_bloom)) if config.eval_bloom else None
    out: list[tuple[str | None, str, str, np.ndarray | None, np.ndarray | None]] = []
    for row in rows:
        raw = row.get("text")
        if not isinstance(raw, str) or not raw.strip():
            out.append(("normalize", "no_text", "", None, None))
            continue
        text = normalize_text(raw)
        removed = _first_reason(row, text, config, contamination)
        out.append((*removed, text, None, None) if removed else (None, "", text, shingles(text, config.shingle_size),
                                                                  None))  # fmt: skip
    kept = [i for i, r in enumerate(out) if r[0] is None]
    if kept:
        signatures = MinHasher(config.num_perm).signatures([out[i][3] for i in kept])  # type: ignore[misc]
        for i, signature in zip(kept, signatures, strict=True):
            out[i] = (*out[i][:4], signature)
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
