"""How --incremental continues a corpus, and when it must not: the newest corpus alone says what it was built
from, so a run skips the inputs it already holds, or, when it cannot add to it, recomputes from every one of them;
the versions it continues may be gone (`gpt2 artifacts gc`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Artifact, Store, input_identity
from gpt2cli.dedupe.config import DedupeConfig
from gpt2cli.dedupe.corpus import BLOOM
from gpt2cli.dedupe.screen import DOCUMENTS, SHARD_KIND, input_sources
from gpt2cli.dedupe.state import STATE, has_state
from gpt2cli.errors import Gpt2Error, UsageError

HISTORY = "history.json"  # in STATE: what the corpus and the versions it continues were built from


def input_key(entry: dict[str, Any]) -> str:
    return str(input_identity(entry) or entry.get("ref"))


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
        consumed = tuple(dict.fromkeys([*self.consumed, *map(input_key, inputs)]))
        if self.documents is None or documents is None:
            return History(consumed, None, self.unknown or unknown)
        keys = {input_key(e) for e in self.documents}
        fresh = {k: e for e in documents if (k := input_key(e)) not in keys}  # a merge's shards name the same
        return History(consumed, (*self.documents, *fresh.values()))  # raw-docs each: once here


def corpus_history(store: Store, corpus: Artifact) -> History:
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
            chain.append(store.recorded(chain[-1], parent, "corpus"))
        except Gpt2Error as e:
            raise UsageError(f"{corpus.ref} was made by an older release, without a history, and the version it "
                             f"continues is gone ({e}); run `gpt2 dedupe` without --incremental on every input the "
                             "corpus should hold") from None  # fmt: skip
    history = History()
    for current in reversed(chain):
        history = history.adding(current.inputs, *_documents_of(store, current))
    return history


def without_superseded(store: Store, history: History, new: Sequence[dict[str, Any]]) -> History:
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
    new_keys = {input_key(e) for e in new_refs}
    superseded = set()
    for entry in reversed(history.documents):
        if "ref" not in entry or input_key(entry) in new_keys:
            continue
        urls = _urls(store, entry)
        if urls is None or not urls <= covering:
            break
        superseded.add(input_key(entry))
    return replace(history, documents=tuple(e for e in history.documents if input_key(e) not in superseded))


def _urls(store: Store, entry: dict[str, Any]) -> set[str] | None:
    """The URLs of the raw-docs version ``entry`` names, as it was when used; None when it is gone, changed, or
    holds a document without a URL (which no other version can be shown to hold)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        artifact = store.recorded(None, entry, "raw-docs")
        if artifact.manifest_sha256 != entry["manifest_sha256"]:
            return None
        with open(artifact.file(DOCUMENTS), "rb") as f:  # a file object: the home's name may not be UTF-8
            # use_threads=False wherever a Python file object is read: Arrow's reader threads call back into it,
            # and one still waiting for the interpreter when it exits aborts the process (exit 134, under load)
            urls = pq.ParquetFile(f).read(columns=["url"], use_threads=False).column("url").to_pylist()
    except (Gpt2Error, pa.ArrowException, OSError, KeyError):
        return None
    return None if None in urls else set(urls)


def latest_corpus(store: Store) -> Artifact | None:
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


def why_recompute(
    base: Artifact, identity: dict[str, Any], config: DedupeConfig, *, force: bool, nothing_new: bool
) -> str | None:
    """Why --incremental must recompute the corpus instead of adding to (or reusing) ``base``: other settings
    (documents screened and grouped under two configurations make a corpus no full run makes), a state this
    release cannot continue, --force, or an --overlap filter ``base`` lacks. None when it can add or reuse."""
    old, new = _settings(base.params.get("config")), _settings(identity)
    if old != new:
        changed = ", ".join(sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)))
        return f"{base.ref} was made with other dedupe settings ({changed})"
    if not has_state(base.path / STATE):
        return f"{base.ref} has no deduplication state of this version"
    if nothing_new and force:
        return "--force with nothing new"
    if nothing_new and config.bloom and not (base.path / BLOOM).is_file():
        return f"--overlap needs an 8-gram Bloom filter, which {base.ref} lacks"
    return None


def all_inputs(
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
        name = entry.get("ref") or entry.get("path")
        try:
            # a raw-docs version of another home (read by path) is read there again, by path
            refs = [str(store.recorded(base, entry, "raw-docs").path)] if "ref" in entry else []
            found, [now] = input_sources(store, refs, [] if refs else [Path(entry["path"])])
        except Gpt2Error as e:
            raise UsageError(_gone(why, f"{base.ref}'s input {name} cannot be read again ({e})")) from None
        if input_key(now) != input_key(entry):
            raise UsageError(_gone(why, f"{base.ref}'s input {name} cannot be read again (it changed since)"))
        seen.add(input_key(entry))
        out_sources += found
        out_inputs.append(now)
    for source, entry in zip(sources, data_inputs, strict=True):
        if input_key(entry) not in seen:
            seen.add(input_key(entry))
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
                shard = store.recorded(artifact, entry, SHARD_KIND)
            except Gpt2Error as e:
                return None, f"{artifact.ref}'s input {entry['ref']} cannot be read again ({e})"
            if shard.manifest_sha256 != entry["manifest_sha256"]:
                return None, f"{artifact.ref}'s input {entry['ref']} cannot be read again (it changed since)"
            shards.append(shard)
        return shard_documents(store, shards)
    if artifact.params.get("config", {}).get("drop_overlap") is None:
        return entries, ""
    if any("ref" in e for e in entries):
        return [e for e in entries if "ref" in e], ""
    return None, f"{artifact.ref}'s --input files cannot be told from its --overlap files"


def shard_documents(store: Store, shards: Sequence[Artifact]) -> tuple[list[dict[str, Any]] | None, str]:
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
