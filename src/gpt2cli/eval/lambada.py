"""LAMBADA (paper section 3.3): predict the last word of a passage, zero-shot.

Data is OpenAI's unpreprocessed ``lambada_test.jsonl`` (original casing and punctuation), as the paper used.

Decisions:

* **Target split.** The target is the last whitespace-separated word *with the space before it* (" word"),
  the context is everything before that space. GPT-2's pre-tokenizer glues a leading space, and only a space,
  to the word that follows it, so " word" is how the word is tokenized inside running text; a context ending
  in a space would force an unnatural lone " " token. After another whitespace character (a newline) the
  word starts its own token, and the whitespace stays in the context: "of\\n\\nPower" is "of\\n\\n" + "Power".
  Context and target are encoded separately so that target tokens never straddle the boundary, and the context
  as in the running text (``encode_context``: "of", "\\n", "\\n", not "of", "\\n\\n").
* **Accuracy.** An example is correct when every target token is the argmax of the model's distribution
  given the (left-truncated) context and the previous target tokens, i.e. greedy decoding reproduces the
  target exactly.
* **Perplexity.** ``ppl = exp(nll_sum / examples)``: per *word* (the dataset's canonical unit, as the
  paper reports perplexity), where ``nll_sum`` is the total NLL in nats of all target tokens.
  ``ppl_per_token = exp(nll_sum / target_tokens)`` is also given. NLL is always the unfiltered model's.
* **Stop-word filter** (the paper's 63.24% variant, "candidate words restricted by a stop-word filter"),
  approximated at the first target position: every token whose text, stripped of whitespace and
  lower-cased, is one of STOP_WORDS is excluded from the candidates there, except the target's own first
  token (it is the start of the target, which is a legal non-stop-word candidate). Later target positions
  are plain argmax. A target whose word (punctuation stripped, lower-cased) is itself a stop word is
  counted wrong: the filter forbids predicting it. So, per example, the filter can only (a) turn a plain
  failure into a success when the plain argmax at the first position was a stop-word token, or (b) turn
  a stop-word target into a failure. Remaining approximation: non-stop words that start with a
  stop-word token other than the target's (" the" + "sis") are excluded too, and stop words spelled by
  several tokens are not excluded (in GPT-2's vocabulary every listed word after a space is one token;
  only a few capitalized forms such as " Themselves" are not).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.files import jsonl_rows
from gpt2cli.eval.lm import perplexity
from gpt2cli.model import check_finite

# Common English function words (pronouns, determiners, auxiliaries, prepositions, conjunctions).
_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves also may might must shall yet upon within without
    whose something anything nothing everything someone anyone everyone one us ever even still
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())
_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019\u2026\u2014\u2013"  # curly quotes, ellipsis, dashes


def read_lambada(path: Path | str) -> list[str]:
    """Passages of OpenAI's ``lambada_test.jsonl``; a bad line is an error naming file:line, not a skip,
    because a silently shorter test set would change the reported accuracy."""
    passages = []
    for where, row in jsonl_rows(path):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.split():
            raise Gpt2Error(f"{where}: not a JSON object with a non-empty 'text' string")
        passages.append(text)
    return passages


def split_last_word(passage: str) -> tuple[str, str]:
    """(context, target) with target = the last word, with the space before it when a space precedes it.

    Trailing whitespace is dropped. A one-word passage has an empty context and no leading space.
    """
    text = passage.rstrip()
    if not text:
        raise Gpt2Error("empty LAMBADA passage")
    start = len(text) - len(text.split()[-1])
    if start > 0 and text[start - 1] == " ":
        start -= 1  # the space before the word belongs to the target, as GPT-2's pre-tokenizer glues it
    return text[:start], text[start:]


def is_stop_word(word: str) -> bool:
    return word.strip().strip(_PUNCT).lower() in STOP_WORDS


def stop_word_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Tokens that by themselves spell a stop word (" the", "The", " you" ...)."""
    return [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]).strip().lower() in STOP_WORDS]


@dataclass
class LambadaResult:
    examples: int
    correct: int
    nll_sum: float  # nats, summed over all target tokens
    target_tokens: int
    per_example: list[bool] = field(default_factory=list, repr=False)  # correctness, in input order

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    @property
    def ppl(self) -> float:
        """Per-word perplexity of the last word (one target word per example), as the paper reports."""
        return perplexity(self.nll_sum, self.examples)

    @property
    def ppl_per_token(self) -> float:
        return perplexity(self.nll_sum, self.target_tokens)


def encode_context(tokenizer: Tokenizer, context: str) -> list[int]:
    """The context's tokens as GPT-2 reads them in the running text, where a word follows: there a run of
    whitespace before the word ends in a token of its own ("of\\n\\nPower" is "of", "\\n", "\\n", "Power"), which
    the context alone would end in one ("\\n\\n")."""
    if len(context) > 1 and context[-1].isspace() and context[-2].isspace():
        return tokenizer.encode(context[:-1]) + tokenizer.encode(context[-1])
    return tokenizer.encode(context)


def _encode(tokenizer: Tokenizer, passage: str, n_ctx: int) -> tuple[list[int], list[int]]:
    context, target = split_last_word(passage)
    ctx, tgt = encode_context(tokenizer, context), tokenizer.encode(target)
    if not ctx:  # nothing to condition on: start from <|endoftext|>, as GPT-2 documents begin
        ctx = [tokenizer.eot_id]
    if len(tgt) >= n_ctx:
        raise Gpt2Error(f"LAMBADA target of {len(tgt)} tokens does not fit the model's context ({n_ctx})")
    return ctx[-(n_ctx - len(tgt) + 1) :], tgt  # the input is ctx + tgt[:-1], at most n_ctx tokens


def evaluate_lambada(
    model: nn.Module,
    tokenizer: Tokenizer,
    passages: Sequence[str],
    *,
    stop_word_filter: bool = False,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LambadaResult:
    """Score the last word of each passage (see the module docstring for the exact rules).

    Batches are right-padded: with causal attention, positions after a row's end cannot affect the
    logits at its target positions, so results do not depend on batching. Passages are batched by
    length to keep padding small. ``dtype`` other than float32 runs the model under autocast.
    """
    return _evaluate(model, tokenizer, passages, (stop_word_filter,), batch_size=batch_size, device=device,
                     dtype=dtype)[0]  # fmt: skip


def evaluate_lambada_both(
    model: nn.Module,
    tokenizer: Tokenizer,
    passages: Sequence[str],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[LambadaResult, LambadaResult]:
    """(plain, stop-word filtered): what two ``evaluate_lambada`` calls give, from one model pass, since both
    read the same logits and the stage reports both (half the compute)."""
    plain, filtered = _evaluate(model, tokenizer, passages, (False, True), batch_size=batch_size, device=device,
                                dtype=dtype)  # fmt: skip
    return plain, filtered


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    tokenizer: Tokenizer,
    passages: Sequence[str],
    filters: Sequence[bool],
    *,
    batch_size: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> list[LambadaResult]:
    """One result per entry of ``filters`` (True: with the stop-word filter), all from one pass of the model."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n_ctx = model.config.n_ctx
    encoded = [_encode(tokenizer, p, n_ctx) for p in passages]
    stop_ids = torch.tensor(stop_word_token_ids(tokenizer) if any(filters) else [], dtype=torch.long)
    stop_ids = stop_ids.to(device)
    per_example = [[False] * len(encoded) for _ in filters]
    nll_sum, target_tokens = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))
    try:
        for b in range(0, len(order), max(batch_size, 1)):
            rows = order[b : b + max(batch_size, 1)]
            inputs = [encoded[i][0] + encoded[i][1][:-1] for i in rows]
            width = max(map(len, inputs))
            idx = torch.zeros(len(rows), width, dtype=torch.long)
            for r, seq in enumerate(inputs):
                idx[r, : len(seq)] = torch.tensor(seq)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(idx.to(device))
            for r, i in enumerate(rows):
                ctx, tgt = encoded[i]
                # logits at position t predict token t + 1: target tokens are predicted from len(ctx) - 1 on
                pos = len(ctx) - 1
                row = logits[r, pos : pos + len(tgt)].float()
                target = torch.tensor(tgt, device=device)
                picked = F.log_softmax(row, dim=-1).gather(1, target[:, None])
                check_finite(picked)  # NaN logits would also make the argmax below pick token 0
                nll_sum += -picked.sum().item()
                target_tokens += len(tgt)
                stop_target = any(filters) and is_stop_word(tokenizer.decode(tgt))
                for f, filtered in enumerate(filters):
                    per_example[f][i] = _reproduced(row, target, stop_ids if filtered else None, stop_target)
    finally:
        model.train(was_training)
    return [LambadaResult(len(encoded), sum(hits), nll_sum, target_tokens, hits) for hits in per_example]


def _reproduced(row: torch.Tensor, target: torch.Tensor, stop_ids: torch.Tensor | None, stop_target: bool) -> bool:
    """Whether greedy decoding gives the target; with ``stop_ids``, under the stop-word filter."""
    if stop_ids is not None:
        if stop_target:
            return False  # the filter forbids predicting a stop word
        first = row[0].clone()
        first[stop_ids[stop_ids != target[0]]] = -math.inf
        row = torch.cat([first[None], row[1:]])
    return bool((row.argmax(dim=-1) == target).all())
