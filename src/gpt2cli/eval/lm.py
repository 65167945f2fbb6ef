"""Language-modelling perplexity the way the paper reports it: per canonical unit of the dataset (section 3).

Window rule (``sliding_windows``): the stream's n - 1 predictions (token t from the tokens before it) are
cut into windows of at most ``context`` predictions: window k feeds the model ``ids[k*stride : k*stride +
context]`` (the last token not needed as input is dropped) and scores only the predictions that no earlier
window made, which makes every token but the first predicted exactly once, from the start of the first
window that reaches it. ``stride == context`` gives disjoint windows, the consecutive x/y chunks of training
(the first prediction of a chunk sees 1 token, the last ``context``); ``stride < context`` gives every
prediction after the first window at least ``context - stride + 1`` tokens of left context, at
``context / stride`` times the compute. With ``align_last`` (what `gpt2 eval zero-shot` uses) the last window
is moved back to read a full ``context`` tokens, still scoring only the predictions no earlier window made:
its predictions get more left context at no extra cost, and with ``stride == context`` the windows are those of
lm-evaluation-harness's rolling log-likelihood (its numbers are reproduced to ~1e-7, see BENCHMARKS.md).
``evaluate_text`` puts ``<|endoftext|>`` in front of the text's
tokens, as GPT-2 saw document starts in training, so the first real token is predicted too (from the
``<|endoftext|>`` alone) and ``tokens`` is exactly ``len(tokenizer.encode(text))``.

Unit rule (``count_units``): "word" counts the words of the ORIGINAL tokenized dataset file, whitespace
tokens plus one ``<eos>`` per line, the standard word-level count (WikiText-2 test 245,569, PTB test 82,430).
Lines end at "\\n" alone (``text_lines``), where the de-tokenizers break them and where the text scored has the
newline that stands for the ``<eos>``; a missing final newline changes nothing here, and the stage scores the
text with it. "byte" counts UTF-8 bytes (enwik8), "char" code points (text8), "token" the BPE tokens scored
(WebText). A perplexity too large for a float (a mean NLL above ~709.78 nats) is infinite (``perplexity``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gpt2cli.errors import UsageError
from gpt2cli.eval.files import text_lines
from gpt2cli.model import check_finite

UNITS = ("word", "byte", "char", "token")


@dataclass(frozen=True)
class LMResult:
    """Total negative log-likelihood of a text and the counts to normalise it by."""

    nll_sum: float  # nats, over all scored tokens
    tokens: int  # BPE tokens scored
    units: int  # canonical units of the dataset
    unit: str  # "word" | "byte" | "char" | "token"

    @property
    def token_ppl(self) -> float:
        return perplexity(self.nll_sum, self.tokens)

    @property
    def unit_ppl(self) -> float:
        """The paper's perplexity: exp(total NLL / number of original units)."""
        return perplexity(self.nll_sum, self.units)

    @property
    def bits_per_unit(self) -> float:
        """bits per byte (enwik8) or per character (text8)."""
        return self.nll_sum / self.units / math.log(2) if self.units else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "token_ppl": self.token_ppl, "unit_ppl": self.unit_ppl,
                "bits_per_unit": self.bits_per_unit}  # fmt: skip


def perplexity(nll_sum: float, count: int) -> float:
    """exp(nll_sum / count): NaN for no count, infinite where that overflows a float (a mean NLL above ~709.78
    nats: a legitimate, if terrible, score, which ``math.exp`` would raise on)."""
    if not count:
        return math.nan
    try:
        return math.exp(nll_sum / count)
    except OverflowError:
        return math.inf


def count_units(original: str, unit: str) -> int:
    """Canonical units of a dataset's ORIGINAL text (before de-tokenizing); see the module docstring."""
    if unit == "word":
        return sum(len(line.split()) + 1 for line in text_lines(original))
    if unit == "byte":
        return len(original.encode("utf-8"))
    if unit == "char":
        return len(original)
    raise UsageError(f"unknown unit {unit!r}; choose from word, byte, char (token units are the tokens scored)")


def sliding_windows(n: int, context: int, stride: int, align_last: bool = False) -> list[tuple[int, int, int]]:
    """``(begin, end, first)`` per window over a stream of ``n`` tokens: the model reads ``ids[begin:end]``
    and the predictions made at positions ``[first, end)``, of targets ``ids[first + 1 : end + 1]``, are
    scored. See the window rule in the module docstring."""
    if context < 1:
        raise UsageError(f"context must be at least 1 token, got {context}")
    if not 1 <= stride <= context:
        raise UsageError(f"stride must be between 1 and the context ({context}), got {stride}")
    predictions = n - 1
    windows: list[tuple[int, int, int]] = []
    begin = first = 0
    while predictions >= 1:
        end = min(begin + context, predictions)
        if align_last and end == predictions:
            begin = max(0, end - context)  # a full context for the last window; `first` still avoids re-scoring
        windows.append((begin, end, first))
        if end == predictions:
            break
        begin, first = begin + stride, end
    return windows


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def score_documents(
    model: torch.nn.Module,
    documents: Sequence[Sequence[int]],
    *,
    context: int,
    stride: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    align_last: bool = False,
) -> list[tuple[float, int]]:
    """Per document: total NLL in nats of predicting ``ids[1:]`` under the window rule, and the number of
    tokens scored.

    The windows of all documents are batched together, longest first, so a document's last, short window
    shares a forward pass with other documents' windows instead of running in a half-empty batch. A short
    window is right-padded, which cannot change any scored logit under causal attention (padded positions
    are never scored). ``dtype`` bfloat16/float16 runs the model under autocast; the log-softmax is always
    taken in float32 and the sums kept in float64.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    n_ctx = getattr(getattr(model, "config", None), "n_ctx", None)
    if n_ctx is not None and context > n_ctx:
        raise UsageError(f"context {context} is longer than the model's ({n_ctx})")
    windows = [
        (doc, *w) for doc, ids in enumerate(documents) for w in sliding_windows(len(ids), context, stride, align_last)
    ]
    windows.sort(key=lambda w: w[2] - w[1], reverse=True)  # stable: equal widths keep the documents' order
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    streams = [torch.tensor(list(ids), dtype=torch.long) for ids in documents]
    totals = [0.0] * len(documents)
    scored = [len(ids) - 1 if len(ids) > 1 else 0 for ids in documents]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                batch = windows[i : i + batch_size]
                width = batch[0][2] - batch[0][1]
                x = torch.zeros(len(batch), width, dtype=torch.long)
                y = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: not scored by this window
                for row, (doc, begin, end, first) in enumerate(batch):
                    x[row, : end - begin] = streams[doc][begin:end]
                    y[row, first - begin : end - begin] = streams[doc][first + 1 : end + 1]
                with _autocast(dev, dtype):
                    nll = model(x.to(dev), targets=y.to(dev), reduction="none")
                check_finite(nll)
                for (doc, *_), row_nll in zip(batch, nll.double().sum(dim=1).tolist(), strict=True):
                    totals[doc] += row_nll
    finally:
        model.train(was_training)
    return list(zip(totals, scored, strict=True))


def score_tokens(
    model: torch.nn.Module,
    ids: Sequence[int],
    *,
    context: int,
    stride: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    align_last: bool = False,
) -> tuple[float, int]:
    """``score_documents`` for one token stream."""
    return score_documents(model, [ids], context=context, stride=stride, batch_size=batch_size, device=device,
                           dtype=dtype, align_last=align_last)[0]  # fmt: skip


def evaluate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    unit: str,
    units: Sequence[int] | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    align_last: bool = False,
) -> list[LMResult]:
    """Score each text as one document (``<|endoftext|>`` + its tokens) and normalise per canonical unit.

    ``units[i]`` is the count of text i's ORIGINAL dataset (``count_units(original, unit)``) when the text
    was de-tokenized; it is required for words, whose count the de-tokenized text no longer shows. Without
    it, bytes and characters are counted in the text and tokens are the tokens scored. ``context`` defaults
    to the model's, ``stride`` to ``context`` (disjoint windows). The windows of all texts share batches.
    """
    if unit not in UNITS:
        raise UsageError(f"unknown unit {unit!r}; choose from {', '.join(UNITS)}")
    if units is None and unit == "word":
        raise UsageError("word units must be counted on the original tokenized text: pass units=")
    if units is not None and len(units) != len(texts):
        raise UsageError(f"{len(units)} unit counts for {len(texts)} texts")
    if context is None:
        context = model.config.n_ctx
    documents = [[tokenizer.eot_id, *ids] for ids in tokenizer.encode_batch(texts)]
    scores = score_documents(model, documents, context=context, stride=stride or context, batch_size=batch_size,
                             device=device, dtype=dtype, align_last=align_last)  # fmt: skip
    results = []
    for i, (nll, tokens) in enumerate(scores):
        n = units[i] if units is not None else tokens if unit == "token" else count_units(texts[i], unit)
        results.append(LMResult(nll_sum=nll, tokens=tokens, units=n, unit=unit))
    return results


def evaluate_text(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    unit: str,
    units: int | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    align_last: bool = False,
) -> LMResult:
    """``evaluate_texts`` for one text (``units``: its count, as there)."""
    return evaluate_texts(model, tokenizer, [text], unit=unit, units=None if units is None else [units],
                          context=context, stride=stride, batch_size=batch_size, device=device, dtype=dtype,
                          align_last=align_last)[0]  # fmt: skip
