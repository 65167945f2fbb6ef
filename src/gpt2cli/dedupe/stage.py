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
"""

from __future__ import annotations

import hashlib
import heapq
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
from gpt2cli.console import json_utf8, progress
from gpt2cli.dedupe.bloom import BloomFilter, build_ngram_bloom, ngram_items, overlap_report
from gpt2cli.dedupe.filters import (
    LANGUAGES,
    QualityConfig,
    language_reason,
    length_reason,
    quality_reason,
    wikipedia_reason,
)
from gpt2cli.dedupe.minhash import (
    HASH_VERSION,
    LSHIndex,
    MinHasher,
    UnionFind,
    choose_keepers,
    jaccard,
    lsh_params,
    shingles,
)
from gpt2cli.dedupe.normalize import normalize_text, text_key
from gpt2cli.documents import JSONL_SUFFIXES, Malformed, expand_inputs, read_records
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.textutil import utf8_name, valid_unicode_in
from gpt2cli.workers import worker_pool

log = logging.getLogger(__name__)

CORPUS = "documents-00000.parquet"
DOCUMENTS = "documents.parquet"  # a raw-docs version's file
STATE = "dedupe-state"
REPORT = "report.json"
HISTORY = "history.json"  # in STATE: what the corpus and the versions it continues were built from
BLOOM = "bloom-8gram.npz"
RAW_DOCS_COLUMNS = {"url", "text"}
EXAMPLES = 3


# Beyond this, signatures cost 4 bytes per permutation per document and the LSH band search grows, for no
# accuracy a corpus needs (the paper's dedupe is coarser still).
MAX_NUM_PERM = 1024


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

    def validate(self) -> None:
        """Refuse, naming the option, values the stage would crash on or silently misuse (a val share of 2
        leaves no training documents), before any work."""
        problems = [
            (not 0 < self.near_threshold < 1, f"--threshold must be in (0, 1), got {self.near_threshold}"),
            (
                not 1 <= self.num_perm <= MAX_NUM_PERM,
                f"--num-perm must be in [1, {MAX_NUM_PERM}], got {self.num_perm}",
            ),
            (not 0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (
                self.language is not None and self.language not in LANGUAGES,
                f"--language must be 'any' or one of {', '.join(LANGUAGES)}; got {self.language!r}",
            ),
            (
                not 0 <= self.quality.min_words <= self.quality.max_words,
                f"--min-words must be in [0, {self.quality.max_words}], got {self.quality.min_words}",
            ),
            (
                self.drop_overlap is not None and not 0 <= self.drop_overlap <= 1,
                f"--drop-overlap must be in [0, 1], got {self.drop_overlap}",
            ),
            (self.workers < 0, f"--workers must be 0 (all cores) or more, got {self.workers}"),
        ]
        for failed, message in problems:
            if failed:
                raise UsageError(message)


def split_of(url_or_text: str, val_fraction: float) -> str:
    """`val` for a stable share of documents, decided by the hash of the normalized URL: a refresh never
    moves a document between splits."""
    h = int.from_bytes(hashlib.blake2b(url_or_text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2**64 else "train"


@dataclass
class Doc:
    """A document that passed the filters, as the duplicate steps need it; its text stays on disk."""

    order: int  # position in the input stream: "earliest" for the keeper rule, and the output order
    score: int | None
    key: bytes  # exact-duplicate key of the normalized text
    url: str | None
    snippet: str  # the start of the text, for the report's examples
    shingles: np.ndarray  # a view of the memory-mapped shingle file


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


def _input_sources(
    store: Store, raw_refs: Sequence[str], inputs: Sequence[Path]
) -> tuple[list[tuple[Path, str]], list[dict[str, Any]]]:
    """(file, provenance) pairs to read, and their manifest inputs: raw-docs artifacts or --input files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if inputs:
        paths = expand_inputs([Path(p) for p in inputs])
        return [(path, str(path)) for path in paths], [file_input(path) for path in paths]
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
        shards = _check_shards([store.resolve(ref, SHARD_KIND, option="--merge") for ref in merge], identity)
        manifest_inputs = [artifact_input(a) for a in shards]
    else:
        sources, data_inputs = _input_sources(store, raw_refs, inputs)
        eval_inputs = [file_input(p) for p in eval_files] if config.drop_overlap is not None else []
        manifest_inputs = data_inputs + eval_inputs
    if shard is not None:
        params = {"config": identity, "shards": shard.count, "shard_index": shard.index}

        def build_shard(draft: Draft) -> dict[str, Any]:
            screened = _screen_all(draft.dir / STATE, sources, _run_config(config, eval_files, draft), shard)
            return {k: v for k, v in screened.items() if k != "report"}

        return store.produce(SHARD_KIND, params=params, inputs=manifest_inputs, build=build_shard, force=force,
                             wait=wait)  # fmt: skip
    base = _latest_corpus(store) if incremental else None
    if incremental and base is None:
        log.info("no previous corpus: --incremental starts a new one")
    history = History()
    if base is not None:
        history = _history(store, base)
        consumed = set(history.consumed)
        nothing_new = all(_input_key(i) in consumed for i in manifest_inputs)
        if why := _why_recompute(base, identity, config, force=force, nothing_new=nothing_new):
            if merge:
                raise UsageError(f"{why}; --merge cannot recompute it: merge without --incremental")
            log.warning("%s: recomputing the corpus from every input of %s and this run's", why, base.ref)
            sources, data_inputs = _all_inputs(store, base, history, why, sources, data_inputs)
            manifest_inputs = data_inputs + eval_inputs
            base, history = None, History()
        elif nothing_new:
            log.info("nothing new: %s already holds every input; reusing it", base.ref)
            store.mark_current(base)
            return Published(base, reused=True)
    documents, unknown = _shard_documents(store, shards) if merge else (data_inputs, "")
    history = _without_superseded(store, history.adding(manifest_inputs, documents, unknown), documents or [])
    params = {"config": identity, "incremental": base.ref if base else None}
    if merge:
        params["shards"] = len(merge)

    def build(draft: Draft) -> dict[str, Any]:
        if merge:
            parts = [a.path / STATE for a in shards]
        else:
            _screen_all(draft.work / STATE, sources, _run_config(config, eval_files, draft), Shard())
            parts = [draft.work / STATE]
        summary = _deduplicate(draft.dir, parts, config, base)
        (draft.dir / STATE / HISTORY).write_bytes(json_utf8(asdict(history)))
        return summary

    retains = [e for e in history.documents or () if "ref" in e]  # what a recompute reads: gc keeps them
    return store.produce(
        "corpus", params=params, inputs=manifest_inputs, build=build, force=force, wait=wait, parent=base,
        retains=retains,
    )  # fmt: skip


SHARD_KIND = "dedupe-shard"


def _input_key(entry: dict[str, Any]) -> str:
    return str(entry.get("manifest_sha256") or entry.get("sha256") or entry.get("ref"))


@dataclass(frozen=True)
class History:
    """What a corpus and the versions it continues were built from, kept in the corpus so that it stands alone
    once those versions are gone: the keys of every input added (--incremental skips them) and the inputs the
    documents came from, oldest first (a full recompute reads them again); ``documents`` is None when they
    cannot be known, and ``unknown`` says why."""

    consumed: tuple[str, ...] = ()
    documents: tuple[dict[str, Any], ...] | None = ()
    unknown: str = ""

    def adding(
        self, inputs: Sequence[dict[str, Any]], documents: Sequence[dict[str, Any]] | None, unknown: str
    ) -> History:
        """This history with one more run's manifest inputs and the inputs its documents came from."""
        consumed = tuple(dict.fromkeys([*self.consumed, *map(_input_key, inputs)]))
        if self.documents is None or documents is None:
            return History(consumed, None, self.unknown or unknown)
        keys = {_input_key(e) for e in self.documents}
        fresh = {k: e for e in documents if (k := _input_key(e)) not in keys}  # a merge's shards name the same
        return History(consumed, (*self.documents, *fresh.values()))  # raw-docs each: once here


def _history(store: Store, corpus: Artifact) -> History:
    """A corpus's history: its history file, or, for a corpus an older release made, what the versions it
    continues say (those must still be there)."""
    path = corpus.path / STATE / HISTORY
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            documents = saved["documents"]
            return History(tuple(saved["consumed"]), None if documents is None else tuple(documents), saved["unknown"])
        except (ValueError, KeyError, TypeError) as e:
            raise Gpt2Error(f"{corpus.ref}: {path} is damaged ({type(e).__name__}: {e}); `gpt2 artifacts verify "
                            f"{corpus.ref}` checks it") from None  # fmt: skip
    chain = [corpus]
    while parent := chain[-1].parent:
        try:
            chain.append(store.resolve(parent["ref"], "corpus"))
        except Gpt2Error as e:
            raise UsageError(f"{corpus.ref} was made by an older release, without a history, and the version it "
                             f"continues is gone ({e}); run `gpt2 dedupe` without --incremental on every input the "
                             "corpus should hold") from None  # fmt: skip
    history = History()
    for current in reversed(chain):
        history = history.adding(current.inputs, *_documents_of(store, current))
    return history


def _without_superseded(store: Store, history: History, new: Sequence[dict[str, Any]]) -> History:
    """``history`` less the earlier raw-docs versions whose every URL a raw-docs version of this run also holds.
    A scrape of the same links (the same dumps again, next month's added) holds the same pages, read back from
    the crawl's archive: a recompute then reads the newest alone, and gc may remove the others, which hourly
    refreshes would otherwise pile up (each holding every page). Checked newest first, up to the first one that
    is not covered; a version that cannot be read stays."""
    new_refs = [e for e in new if "ref" in e]
    if history.documents is None or not new_refs:
        return history
    covering: set[str] = set()
    for entry in new_refs:
        if (urls := _urls(store, entry)) is None:
            return history
        covering |= urls
    new_keys = {_input_key(e) for e in new_refs}
    superseded = set()
    for entry in reversed(history.documents):
        if "ref" not in entry or _input_key(entry) in new_keys:
            continue
        urls = _urls(store, entry)
        if urls is None or not urls <= covering:
            break
        superseded.add(_input_key(entry))
    return replace(history, documents=tuple(e for e in history.documents if _input_key(e) not in superseded))


def _urls(store: Store, entry: dict[str, Any]) -> set[str] | None:
    """The URLs of the raw-docs version ``entry`` names, as it was when used; None when it is gone, changed, or
    holds a document without a URL (which no other version can be shown to hold)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        artifact = store.resolve(entry["ref"], "raw-docs")
        if artifact.manifest_sha256 != entry["manifest_sha256"]:
            return None
        with open(artifact.file(DOCUMENTS), "rb") as f:  # a file object: the home's name may not be UTF-8
            urls = pq.read_table(f, columns=["url"]).column("url").to_pylist()
    except (Gpt2Error, pa.ArrowException, OSError, KeyError):
        return None
    return None if None in urls else set(urls)


def _latest_corpus(store: Store) -> Artifact | None:
    """The corpus --incremental continues: the newest version, or None when there is none. A newest version
    whose manifest is damaged is an error, never a reason to continue an older one (its documents would be
    lost from the next version)."""
    try:
        return store.resolve("corpus", "corpus", option="--incremental")
    except UsageError:
        if store.versions("corpus"):  # a corpus there, of another kind: not "no corpus yet"
            raise
        return None
    except Gpt2Error as e:
        raise Gpt2Error(
            f"--incremental continues the newest corpus, which is damaged ({e}); restore it, or remove that version "
            "to continue the one before"
        ) from None


def _settings(config: Any) -> dict[str, Any]:
    """A corpus's dedupe settings as its manifest holds them (JSON), less the Bloom filter: an incremental run
    builds that over the whole output, so asking for it or not never mixes two configurations."""
    if not isinstance(config, dict):
        return {}
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "bloom"}, sort_keys=True))


def _why_recompute(
    base: Artifact, identity: dict[str, Any], config: DedupeConfig, *, force: bool, nothing_new: bool
) -> str | None:
    """Why --incremental must recompute the corpus instead of adding to (or reusing) ``base``: other settings
    (documents screened and grouped under two configurations make a corpus no full run makes), a state this
    release cannot continue, --force, or an --overlap filter ``base`` lacks. None when it can add or reuse."""
    old, new = _settings(base.params.get("config")), _settings(identity)
    if old != new:
        changed = ", ".join(sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)))
        return f"{base.ref} was made with other dedupe settings ({changed})"
    if not _has_state(base.path / STATE):
        return f"{base.ref} has no deduplication state of this version"
    if nothing_new and force:
        return "--force with nothing new"
    if nothing_new and config.bloom and not (base.path / BLOOM).is_file():
        return f"--overlap needs an 8-gram Bloom filter, which {base.ref} lacks"
    return None


def _all_inputs(
    store: Store,
    base: Artifact,
    history: History,
    why: str,
    sources: list[tuple[Path, str]],
    data_inputs: list[dict[str, Any]],
) -> tuple[list[tuple[Path, str]], list[dict[str, Any]]]:
    """The documents' inputs of ``base`` and the versions it continues, oldest first, then this run's: what a
    full recompute reads, as (file, provenance) pairs and manifest inputs. Each must still be there unchanged:
    a recompute from part of the inputs would silently drop documents."""
    if history.documents is None:
        raise UsageError(_gone(why, history.unknown))
    out_sources: list[tuple[Path, str]] = []
    out_inputs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in history.documents:
        refs, paths = ([entry["ref"]], []) if "ref" in entry else ([], [Path(entry["path"])])
        name = entry.get("ref") or entry.get("path")
        try:
            found, [now] = _input_sources(store, refs, paths)
        except Gpt2Error as e:
            raise UsageError(_gone(why, f"{base.ref}'s input {name} cannot be read again ({e})")) from None
        if _input_key(now) != _input_key(entry):
            raise UsageError(_gone(why, f"{base.ref}'s input {name} cannot be read again (it changed since)"))
        seen.add(_input_key(entry))
        out_sources += found
        out_inputs.append(now)
    for source, entry in zip(sources, data_inputs, strict=True):
        if _input_key(entry) not in seen:
            seen.add(_input_key(entry))
            out_sources.append(source)
            out_inputs.append(entry)
    return out_sources, out_inputs


def _documents_of(store: Store, artifact: Artifact) -> tuple[list[dict[str, Any]] | None, str]:
    """The inputs a corpus or dedupe-shard read documents from: a merge's shards expanded, --drop-overlap's
    eval files left out. None, and why, when they cannot be known: a shard is gone, or --input files sit beside
    --overlap files (the manifest cannot tell them apart)."""
    entries = artifact.inputs
    shard_entries = [e for e in entries if str(e.get("ref", "")).startswith(f"{SHARD_KIND}@")]
    if shard_entries:
        shards = []
        for entry in shard_entries:
            try:
                shard = store.resolve(entry["ref"], SHARD_KIND)
            except Gpt2Error as e:
                return None, f"{artifact.ref}'s input {entry['ref']} cannot be read again ({e})"
            if shard.manifest_sha256 != entry["manifest_sha256"]:
                return None, f"{artifact.ref}'s input {entry['ref']} cannot be read again (it changed since)"
            shards.append(shard)
        return _shard_documents(store, shards)
    if artifact.params.get("config", {}).get("drop_overlap") is None:
        return entries, ""
    if any("ref" in e for e in entries):
        return [e for e in entries if "ref" in e], ""
    return None, f"{artifact.ref}'s --input files cannot be told from its --overlap files"


def _shard_documents(store: Store, shards: Sequence[Artifact]) -> tuple[list[dict[str, Any]] | None, str]:
    """The inputs a merge of ``shards`` read documents from (see _documents_of)."""
    documents: list[dict[str, Any]] = []
    for shard in shards:
        found, unknown = _documents_of(store, shard)
        if found is None:
            return None, unknown
        documents += found
    return documents, ""


def _gone(why: str, what: str) -> str:
    return f"{why}, and {what}; run `gpt2 dedupe` without --incremental on every input the corpus should hold"


def _run_config(config: DedupeConfig, eval_files: Sequence[Path], draft: Draft) -> DedupeConfig:
    if config.drop_overlap is None:
        return config
    path = draft.work / "eval-8gram.npz"
    build_ngram_bloom(_eval_texts(eval_files), n=8, p=1e-8).save(path)
    return replace(config, eval_bloom=str(path))


def _check_shards(artifacts: list[Artifact], identity: dict[str, Any]) -> list[Artifact]:
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


STEPS = ("normalize", "wikipedia", "length", "language", "contamination", "quality")
BATCH_DOCS = 256


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


# -- the state on disk: what duplicate detection needs, for a run, a shard, or a corpus (incremental) ------
#
# A state directory holds the documents that passed the filters, sorted by `order`: docs.parquet (the row as
# JSON with the normalized text, order, score, key, url, snippet), signatures.npy (uint32, one row per doc),
# shingles.u64 (raw little-endian uint64, written as it comes) + shingle_offsets.npy (CSR: doc i's sorted
# shingle hashes), edges.npy (verified duplicate pairs,
# as indices into the docs) and screen.json (the filter steps' report and the input counts).

STATE_FILES = ("docs.parquet", "signatures.npy", "shingles.u64", "shingle_offsets.npy", "edges.npy", "screen.json")
_DOC_SCHEMA_FIELDS = (("row", "string"), ("order", "int64"), ("score", "int64"), ("key", "binary"),
                      ("url", "string"), ("snippet", "string"))  # fmt: skip


class _StateWriter:
    """Writes a state directory document by document; only the offsets and signatures stay in memory."""

    def __init__(self, directory: Path, num_perm: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory.mkdir(parents=True)
        self.directory, self.num_perm = directory, num_perm
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _DOC_SCHEMA_FIELDS])
        # a file object, not a path: pyarrow refuses a path that is not UTF-8 (a --home named so)
        self.docs_file = open(directory / "docs.parquet", "wb")  # noqa: SIM115 (closed in close())
        self.docs = pq.ParquetWriter(self.docs_file, self.schema)
        self.shingles = open(directory / "shingles.u64", "wb")  # noqa: SIM115 (closed in close())
        self.offsets, self.signatures, self.pending = [0], [], []

    def add(self, row_json: str, doc: Doc, signature: np.ndarray) -> None:
        self.pending.append({"row": row_json, "order": doc.order, "score": doc.score, "key": doc.key, "url": doc.url,
                             "snippet": doc.snippet})  # fmt: skip
        self.shingles.write(np.ascontiguousarray(doc.shingles, "<u8").tobytes())
        self.offsets.append(self.offsets[-1] + len(doc.shingles))
        self.signatures.append(np.asarray(signature, np.uint32))
        if len(self.pending) >= 1024:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.docs.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self, edges: Sequence[tuple[int, int]], screen: dict[str, Any]) -> None:
        self._flush()
        self.docs.close()
        self.docs_file.close()
        self.shingles.close()
        n = len(self.offsets) - 1
        np.save(self.directory / "shingle_offsets.npy", np.asarray(self.offsets, np.int64))
        sigs = np.stack(self.signatures) if n else np.zeros((0, self.num_perm), np.uint32)
        np.save(self.directory / "signatures.npy", sigs)
        np.save(self.directory / "edges.npy", np.asarray(edges, np.int64).reshape(-1, 2))
        screen = {**screen, "hash_version": HASH_VERSION}  # which permutations made signatures.npy
        (self.directory / "screen.json").write_text(json.dumps(screen, ensure_ascii=False, default=str))


@dataclass
class _State:
    directory: Path
    docs: list[Doc]
    signatures: np.ndarray
    edges: list[tuple[int, int]]
    screen: dict[str, Any]

    def rows(self) -> Iterator[tuple[int, str]]:
        """(order, row JSON) of every document, in order, streamed from disk."""
        import pyarrow.parquet as pq

        with open(self.directory / "docs.parquet", "rb") as f:  # a file object: the home's name may not be UTF-8
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["order", "row"]):
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)


def _has_state(directory: Path) -> bool:
    """Whether ``directory`` holds a state this release reads (a release before it wrote other files)."""
    return all((directory / name).is_file() for name in STATE_FILES)


def _open_state(directory: Path, what: str) -> _State:
    import pyarrow.parquet as pq

    if not _has_state(directory):
        raise Gpt2Error(f"{what} has no deduplication state of this version; rebuild it without --incremental")
    path = directory / "shingles.u64"
    values = np.memmap(path, "<u8", mode="r") if path.stat().st_size else np.zeros(0, "<u8")
    offsets = np.load(directory / "shingle_offsets.npy")
    with open(directory / "docs.parquet", "rb") as f:  # a file object: the home's name may not be UTF-8
        meta = pq.read_table(f, columns=["order", "score", "key", "url", "snippet"]).to_pydict()
    docs = [
        Doc(order, score, key, url, snippet, values[offsets[i] : offsets[i + 1]])
        for i, (order, score, key, url, snippet) in enumerate(
            zip(meta["order"], meta["score"], meta["key"], meta["url"], meta["snippet"], strict=True)
        )
    ]
    edges = [tuple(e) for e in np.load(directory / "edges.npy").tolist()]
    screen = json.loads((directory / "screen.json").read_text())
    signatures = np.load(directory / "signatures.npy")
    if screen.get("hash_version", 1) != HASH_VERSION:  # made by an older release: re-sign the saved shingles
        signatures = MinHasher(signatures.shape[1]).signatures_csr(values, offsets)
    return _State(directory, docs, signatures, edges, screen)  # type: ignore[arg-type]


# -- screening: the per-document steps, streamed ------------------------------------------------------------


def _screen_all(
    state_dir: Path, sources: Sequence[tuple[Path, str]], config: DedupeConfig, shard: Shard
) -> dict[str, Any]:
    """Normalize, filter, shingle and sign this shard's records on all cores into ``state_dir``. Memory holds
    a few batches of records in flight plus one signature (4 bytes per permutation) and one offset per
    document kept; texts and shingles go to disk as they come."""
    stats: Counter[str] = Counter()
    report = Report()
    writer = _StateWriter(state_dir, config.num_perm)
    workers = config.workers or os.cpu_count() or 1
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


# -- duplicates: exact and near, over the screened documents of every part ---------------------------------


def _deduplicate(out: Path, parts: Sequence[Path], config: DedupeConfig, base: Artifact | None) -> dict[str, Any]:
    """Join the screened parts (and the previous corpus's state, incrementally), find duplicates, keep one
    document per group, and write the corpus and its new state. Memory: per document, its signature, its
    metadata and its shingles' offset; shingles are memory-mapped, texts streamed."""
    old = _open_state(base.path / STATE, base.ref) if base is not None else None
    screened = [_open_state(p, str(p)) for p in parts]
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
    if old is not None:
        known = {d.url for d in old_docs if d.url}
        kept_fresh = [(o, p, i) for o, p, i in fresh if screened[p].docs[i].url not in known]
        stats["already_in_corpus"] = len(fresh) - len(kept_fresh)
        fresh = kept_fresh
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
    n_exact = sum(1 for _, kind in removed_by.values() if kind == "exact")
    report.step("exact_duplicates", len(docs))
    report.step("near_duplicates", len(docs) - n_exact)
    for i, (keeper, kind) in sorted(removed_by.items()):
        d = docs[i]
        report.remove(f"{kind}_duplicates", f"{kind} duplicate of {docs[keeper].url or keeper}", d.url, d.snippet)
    # the rows, streamed in order: the old corpus's documents, then the new ones of every part
    wanted = {(p, i): k for k, (_, p, i) in enumerate(fresh, start=len(old_docs))}

    def numbered(state: _State, part: int, shift: int) -> Iterator[tuple[int, int, int, str]]:
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

    writer = _StateWriter(out / STATE, config.num_perm)
    n_written = 0
    splits: Counter[str] = Counter()
    with _CorpusWriter(out / CORPUS) as corpus:
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
        build_ngram_bloom(_CorpusTexts(out / CORPUS), n=8, p=1e-8).save(out / BLOOM)
    (out / REPORT).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    bands, rows_per_band = lsh_params(config.near_threshold, config.num_perm)
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
    """Pairs of duplicates: the old verified pairs, new exact pairs (same key) and new LSH candidates whose
    true Jaccard reaches the threshold (a pair of two old documents was verified in an earlier run)."""
    bands, rows_per_band = lsh_params(config.near_threshold, config.num_perm)
    index = LSHIndex(bands, rows_per_band)
    index.add(list(range(len(docs))), signatures)
    edges = set(old_edges)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_key[d.key].append(i)
    edges |= {(ids[0], j) for ids in by_key.values() for j in ids[1:] if j >= first_new}
    for i, j in index.candidate_pairs():
        a, b = min(i, j), max(i, j)
        if b < first_new or (a, b) in edges:
            continue
        if jaccard(docs[a].shingles, docs[b].shingles) >= config.near_threshold:
            edges.add((a, b))
    return edges


def _keepers(groups: UnionFind, docs: list[Doc]) -> tuple[set[int], dict[int, tuple[int, str]]]:
    """One keeper per group (`choose_keepers`: the highest score, unknown lowest, then the earliest), and for
    every other member the keeper it duplicates and whether exactly."""
    clusters = groups.groups(min_size=2)
    chosen = choose_keepers(clusters, [d.score for d in docs], [d.order for d in docs])
    removed: dict[int, tuple[int, str]] = {}
    for cluster in clusters:
        best = next(i for i in cluster if i in chosen)
        for i in cluster:
            if i != best:
                removed[i] = (best, "exact" if docs[i].key == docs[best].key else "near")
    return set(range(len(docs))) - removed.keys(), removed


class _CorpusWriter:
    """The corpus Parquet, written in batches as the documents stream by."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path, self.rows, self.writer, self.file = path, [], None, None
        self.schema = pa.schema([("text", pa.string()), ("url", pa.string()), ("domain", pa.string()),
                                 ("title", pa.string()), ("score", pa.int64()), ("raw_docs", pa.string()),
                                 ("split", pa.string())])  # fmt: skip

    def __enter__(self) -> _CorpusWriter:
        import pyarrow.parquet as pq

        self.file = open(self.path, "wb")  # a file object, closed in __exit__: pyarrow refuses non-UTF-8 paths
        self.writer = pq.ParquetWriter(self.file, self.schema)
        return self

    def add(self, row: dict[str, Any], score: int | None, split: str) -> None:
        self.rows.append({"text": row["text"], "url": row.get("url"), "domain": row.get("domain"),
                          "title": row.get("title"), "score": score, "raw_docs": row.get("raw_docs"),
                          "split": split})  # fmt: skip
        if len(self.rows) >= 1024:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows and self.writer is not None:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def __exit__(self, *exc: object) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


class _CorpusTexts:
    """The texts of a corpus file, re-iterable (the Bloom filter reads them twice: to size, then to fill)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        with open(self.path, "rb") as f:  # a file object: pyarrow refuses a path that is not UTF-8
            for batch in pq.ParquetFile(f).iter_batches(columns=["text"]):
                yield from batch.column(0).to_pylist()


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


def iter_corpus_texts(artifact: Artifact) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(artifact.file(CORPUS)).iter_batches(columns=["text"]):
        yield from batch.column(0).to_pylist()
