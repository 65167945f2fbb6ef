"""Summarization, zero-shot (paper section 3.6): CNN/DailyMail with the "TL;DR:" hint.

**Data.** The non-anonymized CNN/DailyMail test set (11,490 articles) as the Hugging Face ``cnn_dailymail``
dataset, version 3.0.0, split ``test``, exported to a local file in one of two forms:

* ``.jsonl`` / ``.json``: JSON Lines, one ``{"article": str, "highlights": str, "id": str}`` per line
  (``Dataset.to_json(path)`` writes exactly this; ``id`` is optional);
* ``.parquet``: the same columns (the dataset's own parquet files, or ``Dataset.to_parquet(path)``).

``highlights`` are the reference summary, one highlight per line.

**Task**, as the paper describes it: the prompt is the article followed by ``"\\nTL;DR:"``; 100 tokens are
generated with top-k sampling, k = 2; the summary is the first 3 sentences of the generated text
(``generation.first_sentences``). Sampling is seeded per article (``generation.row_seed``), so a run is
reproducible and an article's summary does not depend on batching or on ``--limit``.

Decisions the paper leaves open:

* An article too long for the context with the 100 new tokens keeps its *first* tokens (news puts the
  key facts first) and the hint is always kept, rather than the generic left truncation.
* Generation stops early only at <|endoftext|>; newlines are kept (sentences are counted over them).
* ROUGE is Google's ``rouge-score`` (the package of the CNN/DM literature): ROUGE-1, ROUGE-2 and ROUGE-L
  (sentence-level LCS), F-measure, Porter stemming on, averaged over articles, in %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.eval.files import jsonl_rows
from gpt2cli.eval.generation import first_sentences, generate_continuations
from gpt2cli.model import GPT

HINT = "\nTL;DR:"
SUMMARY_TOKENS = 100
TOP_K = 2
SUMMARY_SENTENCES = 3
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
EXAMPLES_IN_REPORT = 3


@dataclass(frozen=True)
class Article:
    article: str
    highlights: str
    id: str = ""


@dataclass(frozen=True)
class SummaryResult:
    """ROUGE F-measures in % and every summary (in input order); ``as_dict`` gives a few of them."""

    examples: int
    scores: dict[str, float]
    summaries: tuple[str, ...] = field(repr=False)
    articles: tuple[Article, ...] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": "cnn-dm",
            "examples": self.examples,
            **{k: round(v, 4) for k, v in self.scores.items()},
            **self.settings,
            "samples": [
                {"id": a.id, "article_start": a.article[:300], "summary": s, "highlights": a.highlights}
                for s, a in list(zip(self.summaries, self.articles, strict=True))[:EXAMPLES_IN_REPORT]
            ],
        }


def _article(row: Any, where: str) -> Article:
    if not isinstance(row, dict):
        raise Gpt2Error(f"{where}: not a JSON object")
    article, highlights, ident = row.get("article"), row.get("highlights"), row.get("id", "")
    if not isinstance(article, str) or not article.strip():
        raise Gpt2Error(f"{where}: 'article' is not a non-empty string")
    if not isinstance(highlights, str) or not highlights.strip():
        raise Gpt2Error(f"{where}: 'highlights' is not a non-empty string")
    return Article(article, highlights, str(ident or ""))


def read_cnn_dm(path: Path | str) -> list[Article]:
    """Articles of a local CNN/DailyMail export (JSON Lines or parquet, see the module docstring); a bad
    row is an error naming the file and the line or row."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix not in (".jsonl", ".json"):
        raise Gpt2Error(f"{path}: expected a .jsonl, .json or .parquet export of cnn_dailymail 3.0.0")
    return [_article(row, where) for where, row in jsonl_rows(path)]


def _read_parquet(path: Path) -> list[Article]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise Gpt2Error(f"cannot read {path} as parquet: {e}") from None
    missing = {"article", "highlights"} - set(table.column_names)
    if missing:
        raise Gpt2Error(f"{path}: no column {', '.join(sorted(missing))} (columns: {', '.join(table.column_names)})")
    columns = [c for c in ("article", "highlights", "id") if c in table.column_names]
    return [_article(row, f"{path}: row {i}") for i, row in enumerate(table.select(columns).to_pylist())]


def summary_prompt(tokenizer: Tokenizer, article: str, n_ctx: int, max_new_tokens: int = SUMMARY_TOKENS) -> list[int]:
    """Article ids (its first tokens, if it must be cut) followed by the hint's, to fit with the new tokens."""
    hint = tokenizer.encode(HINT)
    room = n_ctx - max_new_tokens - len(hint)
    if room < 1:
        raise UsageError(f"a context of {n_ctx} tokens leaves no room for an article and {max_new_tokens} new tokens")
    return tokenizer.encode(article.strip())[:room] + hint


def rouge_scores(summaries: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure in % (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for summary, reference in zip(summaries, references, strict=True):
        scores = scorer.score(reference, summary)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = max(len(summaries), 1)
    return {name: 100 * total / n for name, total in totals.items()}


def evaluate_cnn_dm(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[Article],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_new_tokens: int = SUMMARY_TOKENS,
    top_k: int = TOP_K,
    sentences: int = SUMMARY_SENTENCES,
    progress: Callable[[int, int], None] | None = None,
) -> SummaryResult:
    """Summaries of the articles with the "TL;DR:" hint and their ROUGE against the highlights."""
    n_ctx = model.config.n_ctx
    prompts = [summary_prompt(tokenizer, a.article, n_ctx, max_new_tokens) for a in items]
    gens = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, top_k=top_k, stop=(),
        seed=seed, batch_size=batch_size, device=device, dtype=dtype, progress=progress,
    )  # fmt: skip
    summaries = [first_sentences(g.text, sentences) for g in gens]
    return SummaryResult(
        len(items),
        rouge_scores(summaries, [a.highlights for a in items]),
        tuple(summaries),
        tuple(items),
        {"top_k": top_k, "new_tokens": max_new_tokens, "sentences": sentences, "seed": seed},
    )
