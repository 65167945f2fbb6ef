"""Children's Book Test (paper section 3.2): pick which of 10 words fills the blank, zero-shot.

Tasks ``cbt-cn`` (common nouns) and ``cbt-ne`` (named entities), on the validation sets the paper reports
(``CBTest/data/cbtest_{CN,NE}_valid_2000ex.txt``). File format: examples separated by blank lines, each 21
numbered lines; lines 1-20 are the context sentences, line 21 is
``21 <question with XXXXX>\\t<answer>\\t\\t<candidate 1>|...|<candidate 10>``.

Decisions:

* **Scoring.** As the paper says, "the probability of each choice and the rest of the sentence conditioned on
  this choice": the shared context is the 20 sentences plus the question up to the blank, each candidate's
  continuation is the candidate and the rest of the question sentence; the candidate with the highest summed
  log-probability (``gpt2cli.eval.choice``) is the prediction, the first one on ties. The part before the blank
  is the same for every candidate, so this ranks candidates exactly as the probability of the whole filled
  sentence would. No length normalisation: the paper describes none.
* **Text.** CBT is tokenized PTB-style; GPT-2 reads raw text, so each sentence is lightly de-tokenized:
  ``ptb_detokenize``'s rules (contractions ``do n't``/``he 's`` rejoined, no space before ``, . ; : ! ?`` and
  closing brackets, none after opening ones), then two backticks become an opening ``"`` glued to the next
  word and ``''`` a closing ``"`` glued to the previous one (the file says which is which, so quotes spanning
  sentences stay right), a lone backtick an opening ``'``, a lone ``'`` a closing one. ``--`` and anything
  else are kept. The blank is de-tokenized as a placeholder word, so ``XXXXX 's`` becomes ``<candidate>'s``.
  Sentences are joined with one space (the book's paragraph breaks are not in the data) after an
  ``<|endoftext|>``. Candidates are used exactly as written in the file (no case change).
* **Tokenization.** Context and continuation are encoded separately; the space before the candidate belongs
  to the continuation (GPT-2 glues a leading space to the word after it). Every blank of a question is filled
  with the candidate (CBT removes one word, but the reader does not rely on it); the context ends at the first.
* **Truncation.** When it does not fit ``n_ctx``, the context is cut from the left (``score_choices``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.choice import best_choice, score_choices
from gpt2cli.eval.detokenize import ptb_detokenize
from gpt2cli.eval.files import read_lines
from gpt2cli.model import GPT

BLANK = "XXXXX"
CONTEXT_SENTENCES = 20
CANDIDATES = 10
# Task name -> the validation file under the CBT data directory (CBTest/data/ in the original archive).
CBT_TASKS: dict[str, str] = {"cbt-cn": "cbtest_CN_valid_2000ex.txt", "cbt-ne": "cbtest_NE_valid_2000ex.txt"}

_NUMBERED = re.compile(r"(\d+)(?: (.*))?")
_OPEN_DOUBLE = re.compile(r"``\s*")
_CLOSE_DOUBLE = re.compile(r"\s*''")
_OPEN_SINGLE = re.compile(r"(?<!\S)`\s+")
_CLOSE_SINGLE = re.compile(r"\s+'(?=\s|$)")


@dataclass(frozen=True)
class CBTExample:
    """One question, with the text exactly as in the file (PTB-style tokens)."""

    sentences: tuple[str, ...]  # the 20 context sentences
    question: str  # sentence 21, with XXXXX for the blank
    answer: str
    candidates: tuple[str, ...]  # 10 words, the answer among them


@dataclass(frozen=True)
class CBTResult:
    examples: int
    correct: int
    predictions: list[int] = field(default_factory=list, repr=False)  # chosen candidate index, in input order
    scores: list[tuple[float, ...]] = field(default_factory=list, repr=False)  # summed log-probs per candidate

    @property
    def accuracy(self) -> float:
        """Fraction correct (as ``LambadaResult.accuracy``); ``acc`` is the same in %."""
        return self.correct / self.examples if self.examples else 0.0

    @property
    def acc(self) -> float:
        """Accuracy in %, as the paper reports it."""
        return 100.0 * self.accuracy

    def as_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "correct": self.correct, "examples": self.examples}


def read_cbt(path: Path | str) -> list[CBTExample]:
    """All examples of a CBT file; anything malformed is an error naming file:line rather than a skipped
    example, because a silently smaller test set would change the reported accuracy."""
    path = Path(path)
    lines = read_lines(path)
    examples: list[CBTExample] = []
    sentences: list[str] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            if sentences:
                raise Gpt2Error(f"{path}:{lineno}: example ends after {len(sentences)} lines, expected 21")
            continue
        m = _NUMBERED.fullmatch(line)
        expected = len(sentences) + 1
        if m is None or int(m.group(1)) != expected:
            raise Gpt2Error(f"{path}:{lineno}: expected a line numbered {expected}, got {line[:40]!r}")
        text = m.group(2) or ""
        if expected <= CONTEXT_SENTENCES:
            sentences.append(text)
            continue
        examples.append(_question(path, lineno, sentences, text))
        sentences = []
    if sentences:
        raise Gpt2Error(f"{path}:{len(lines)}: the last example ends after {len(sentences)} lines, expected 21")
    if not examples:
        raise Gpt2Error(f"{path} has no CBT examples")
    return examples


def _question(path: Path, lineno: int, sentences: list[str], text: str) -> CBTExample:
    fields = [f.strip() for f in text.split("\t") if f.strip()]
    if len(fields) != 3:
        raise Gpt2Error(f"{path}:{lineno}: expected '21 <question>\\t<answer>\\t\\t<candidates>', got {len(fields)} "
                        "tab-separated fields")  # fmt: skip
    question, answer, options = fields
    candidates = tuple(c.strip() for c in options.split("|"))
    if BLANK not in question:
        raise Gpt2Error(f"{path}:{lineno}: the question has no {BLANK} blank")
    if len(candidates) != CANDIDATES or not all(candidates):
        raise Gpt2Error(f"{path}:{lineno}: expected {CANDIDATES} non-empty candidates, got {options!r}")
    if len(set(candidates)) != CANDIDATES:
        raise Gpt2Error(f"{path}:{lineno}: a candidate is listed twice in {options!r}")
    if answer not in candidates:
        raise Gpt2Error(f"{path}:{lineno}: the answer {answer!r} is not among the candidates")
    return CBTExample(tuple(sentences), question, answer, candidates)


def cbt_detokenize(sentence: str) -> str:
    """One PTB-style tokenized CBT sentence as plain text (see the module docstring for the rules)."""
    text = ptb_detokenize(" ".join(sentence.split()))
    text = _OPEN_DOUBLE.sub('"', text)
    text = _CLOSE_DOUBLE.sub('"', text)
    text = _OPEN_SINGLE.sub("'", text)
    return _CLOSE_SINGLE.sub("'", text)


def cbt_texts(example: CBTExample) -> tuple[str, list[str]]:
    """(context, one continuation per candidate) as text: ``context + continuation`` is the 20 sentences and the
    question filled with that candidate; the continuation starts with the candidate (and the space before it)."""
    question = cbt_detokenize(example.question)
    cut = question.find(BLANK)
    if cut < 0:
        raise Gpt2Error(f"CBT question has no {BLANK} blank: {example.question!r}")
    text = " ".join([*(t for t in map(cbt_detokenize, example.sentences) if t), question[:cut]])
    if text and text[-1].isspace():  # the space before the candidate goes with it, as GPT-2 tokenizes words
        text = text[:-1]
        lead = " "
    else:
        lead = ""
    rest = question[cut + len(BLANK) :]
    return text, [lead + c + rest.replace(BLANK, c) for c in example.candidates]


@torch.no_grad()
def evaluate_cbt(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[CBTExample],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CBTResult:
    """Accuracy of picking the answer as the most probable filled sentence (module docstring for the rules).

    ``batch_size`` is the number of candidates scored per forward pass after each example's shared context.
    """
    predictions: list[int] = []
    scores: list[tuple[float, ...]] = []
    correct = 0
    for example in examples:
        context, continuations = cbt_texts(example)
        ctx = [tokenizer.eot_id, *tokenizer.encode(context)]
        results = score_choices(model, ctx, [tokenizer.encode(c) for c in continuations], batch_size=batch_size,
                                device=device, dtype=dtype)  # fmt: skip
        row = tuple(r.logprob for r in results)
        choice = best_choice(row)
        predictions.append(choice)
        scores.append(row)
        correct += example.candidates[choice] == example.answer
    return CBTResult(len(examples), correct, predictions, scores)
