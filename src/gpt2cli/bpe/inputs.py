"""The artifacts the BPE stages read, each checked to be of the kind its option names."""

from __future__ import annotations

from pathlib import Path

from gpt2cli.artifacts import Artifact, Store
from gpt2cli.documents import DocumentSource, open_documents
from gpt2cli.errors import UsageError


def resolve_kind(store: Store, ref: str, kind: str, option: str) -> Artifact:
    """``ref`` resolved, refused as a usage error when it is another stage's artifact."""
    artifact = store.resolve(ref)
    if artifact.kind != kind:
        raise UsageError(f"{artifact.ref} is a {artifact.kind!r} artifact; {option} needs a {kind!r} artifact")
    return artifact


def corpus_documents(store: Store, corpus: str | None, inputs: list[Path], val_fraction: float) -> DocumentSource:
    """``open_documents`` with ``--corpus`` checked to name a corpus (open_documents does not check the kind)."""
    if corpus and not inputs:
        corpus = str(resolve_kind(store, corpus, "corpus", "--corpus").path)
    return open_documents(store, corpus, inputs, val_fraction)
