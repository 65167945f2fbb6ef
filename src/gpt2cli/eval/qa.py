"""Question answering, zero-shot (paper section 3): Natural Questions (closed book) and CoQA (reading comprehension).

**nq-open** reads NQ-open JSON Lines (``{"question": str, "answer": [str, ...]}``, e.g. ``NQ-open.dev.jsonl``,
3,610 questions). The paper seeds the context with example question-answer pairs; here:

* ``NQ_SHOTS`` = 8 pairs, ``"Q: question\\nA: answer"`` one line each, joined by newlines, then
  ``"Q: question\\nA:"``. The questions are used verbatim (NQ's are lower-case, without "?").
* The pairs are one fixed selection for the whole run: ``shots + 1`` entries of ``pool`` with different
  questions drawn with ``random.Random(seed)`` (``fixed_examples``), of which each question uses the first
  ``shots`` whose question is not its own: always ``shots`` pairs, also when the file repeats a question.
  ``pool`` defaults to the items; pass the whole file when the items are a slice (``--limit``) so that the
  context does not change with the limit. A pair shows the first of its gold answers. The pairs come from
  the evaluated file itself (NQ-open's train split is not at hand), never the question being asked.
* Greedy decoding; the answer is the generated text up to the first newline, stripped. Metric: exact match
  after SQuAD normalization against any gold answer, in %.

**coqa** reads the original ``coqa-dev-v1.0.json`` (``{"data": [{"id", "story", "questions", "answers",
"additional_answers"}]}``). Each turn is one item; its prompt is the story, a blank line, the previous
turns as ``"Q: question\\nA: answer"`` lines (the gold answers, the conversation history as the paper
describes it), then ``"Q: question\\nA:"``. Greedy decoding up to the first newline. Metrics, in %:

* ``f1``: the official CoQA script's F1 (the paper's 55 F1 is the script's): bag-of-words F1 after the official
  normalization; with several gold answers, the mean over each one left out of the best F1 against the others.
* ``f1_best_answer``: the best F1 over all the gold answers (slightly higher; not what the paper reports).
* ``exact_match``: best over the gold answers.

Long prompts keep their last tokens (``generation``): a CoQA story longer than the context loses its start.
Both tasks generate at most ``QA_MAX_NEW_TOKENS`` tokens (the stage caps it at half a small model's context); the
number used is recorded as ``new_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.files import jsonl_rows, read_text
from gpt2cli.eval.generation import exact_match, f1, fixed_examples, generate_continuations
from gpt2cli.model import GPT

NQ_SHOTS = 8
QA_MAX_NEW_TOKENS = 32  # answers are a few words; generation stops at the newline anyway
EXAMPLES_IN_REPORT = 3


@dataclass(frozen=True)
class NQItem:
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class CoqaTurn:
    story_id: str
    story: str
    history: tuple[tuple[str, str], ...]  # previous turns: (question, gold answer)
    question: str
    answers: tuple[str, ...]  # the answer first, then the additional answers


@dataclass(frozen=True)
class QAResult:
    """Scores in % and every prediction (in input order); ``as_dict`` gives a few of them."""

    task: str
    examples: int
    scores: dict[str, float]
    questions: tuple[str, ...] = field(repr=False)
    predictions: tuple[str, ...] = field(repr=False)
    golds: tuple[tuple[str, ...], ...] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "examples": self.examples,
            **{k: round(v, 4) for k, v in self.scores.items()},
            **self.settings,
            "samples": [
                {"question": q, "prediction": p, "answers": list(g)}
                for q, p, g in list(zip(self.questions, self.predictions, self.golds, strict=True))[:EXAMPLES_IN_REPORT]
            ],
        }


# -- readers -----------------------------------------------------------------------------------------------


def read_nq_open(path: Path | str) -> list[NQItem]:
    """Questions of an NQ-open JSON Lines file; a bad line is an error naming file:line (a silently shorter
    test set would change the score)."""
    items = []
    for where, row in jsonl_rows(path):
        question = row.get("question") if isinstance(row, dict) else None
        answers = row.get("answer") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise Gpt2Error(f"{where}: not a JSON object with a non-empty 'question' string")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise Gpt2Error(f"{where}: 'answer' is not a non-empty list of non-blank strings")
        items.append(NQItem(question.strip(), tuple(answers)))
    return items


def read_coqa(path: Path | str) -> list[CoqaTurn]:
    """Every turn of every story of an original CoQA JSON file, in file order; a malformed story is an error
    naming the file and where in it."""
    path = Path(path)
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise Gpt2Error(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    except RecursionError as e:
        raise Gpt2Error(f"{path}: not JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise Gpt2Error(f"{path}: not a CoQA file (no 'data' list at the top)")
    turns = []
    for s, story in enumerate(raw["data"]):
        turns += _coqa_story(story, f"{path}: data[{s}]")
    return turns


def _coqa_story(story: Any, where: str) -> list[CoqaTurn]:
    if not isinstance(story, dict):
        raise Gpt2Error(f"{where}: not an object")
    where = f"{where} (id {story.get('id')!r})"
    text, questions, answers = story.get("story"), story.get("questions"), story.get("answers")
    if not isinstance(text, str) or not text.strip():
        raise Gpt2Error(f"{where}: 'story' is not a non-empty string")
    extra = story.get("additional_answers") or {}
    if not isinstance(extra, dict):
        raise Gpt2Error(f"{where}: 'additional_answers' is not an object")
    if not isinstance(questions, list) or not questions:
        raise Gpt2Error(f"{where}: 'questions' is not a non-empty list")
    lists = {"questions": questions, "answers": answers, **{f"additional_answers[{k!r}]": v for k, v in extra.items()}}
    for name, value in lists.items():
        if not isinstance(value, list) or len(value) != len(questions):
            raise Gpt2Error(f"{where}: '{name}' is not a list as long as 'questions' ({len(questions)})")
    turns: list[CoqaTurn] = []
    history: list[tuple[str, str]] = []
    for t in range(len(questions)):
        texts = {}
        for name, value in lists.items():
            entry = value[t]
            if not isinstance(entry, dict) or not isinstance(entry.get("input_text"), str):
                raise Gpt2Error(f"{where}: {name}[{t}] has no 'input_text' string")
            if entry.get("turn_id", t + 1) != t + 1:
                raise Gpt2Error(f"{where}: {name}[{t}] has turn_id {entry.get('turn_id')!r}, expected {t + 1}")
            texts[name] = entry["input_text"].strip()
        question, answer = texts.pop("questions"), texts.pop("answers")
        turns.append(CoqaTurn(str(story.get("id", "")), text, tuple(history), question, (answer, *texts.values())))
        history.append((question, answer))
    return turns


# -- prompts -----------------------------------------------------------------------------------------------


def nq_shots(pool: Sequence[NQItem], shots: int, seed: int) -> list[NQItem]:
    """The fixed candidate pairs: ``shots + 1`` of ``pool`` with different questions, so that ``shots`` remain
    without any one question."""
    return fixed_examples(pool, shots, seed, "nq-open", key=lambda item: item.question)


def nq_prompt(item: NQItem, candidates: Sequence[NQItem], shots: int) -> str:
    examples = [c for c in candidates if c.question != item.question][:shots]
    lines = [f"Q: {c.question}\nA: {c.answers[0]}\n" for c in examples]
    return "".join(lines) + f"Q: {item.question}\nA:"


def coqa_prompt(turn: CoqaTurn) -> str:
    history = "".join(f"Q: {q}\nA: {a}\n" for q, a in turn.history)
    return f"{turn.story.strip()}\n\n{history}Q: {turn.question}\nA:"


def answer_of(text: str) -> str:
    """The generated answer: the text up to the first newline, without surrounding whitespace."""
    return text.split("\n", 1)[0].strip()


def coqa_official_f1(prediction: str, golds: Sequence[str]) -> float:
    """The official CoQA turn score: with several gold answers, the mean over each left out of the best F1
    against the others; with one, the F1 against it."""
    if len(golds) < 2:
        return f1(prediction, golds)
    return sum(f1(prediction, [*golds[:i], *golds[i + 1 :]]) for i in range(len(golds))) / len(golds)


# -- evaluation --------------------------------------------------------------------------------------------


def _answers(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    batch_size: int,
    device: torch.device | str,
    dtype: torch.dtype,
    max_new_tokens: int,
    progress: Callable[[int, int], None] | None,
) -> list[str]:
    gens = generate_continuations(
        model, tokenizer, [tokenizer.encode(p) for p in prompts], max_new_tokens=max_new_tokens, stop=("\n",),
        batch_size=batch_size, device=device, dtype=dtype, progress=progress,
    )  # fmt: skip
    return [answer_of(g.text) for g in gens]


def evaluate_nq_open(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[NQItem],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    pool: Sequence[NQItem] | None = None,
    shots: int = NQ_SHOTS,
    seed: int = 0,
    max_new_tokens: int = QA_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> QAResult:
    """Closed-book answers to NQ-open questions after ``shots`` example pairs; exact match in %."""
    candidates = nq_shots(pool if pool is not None else items, shots, seed)
    prompts = [nq_prompt(item, candidates, shots) for item in items]
    predictions = _answers(model, tokenizer, prompts, batch_size, device, dtype, max_new_tokens, progress)
    em = [exact_match(p, item.answers) for p, item in zip(predictions, items, strict=True)]
    return QAResult(
        "nq-open",
        len(items),
        {"exact_match": 100 * sum(em) / len(items) if items else 0.0},
        tuple(item.question for item in items),
        tuple(predictions),
        tuple(item.answers for item in items),
        {"shots": shots, "seed": seed, "new_tokens": max_new_tokens},
    )


def evaluate_coqa(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[CoqaTurn],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_new_tokens: int = QA_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> QAResult:
    """Answers to CoQA turns given the story and the conversation so far; F1 (and EM) in %."""
    prompts = [coqa_prompt(turn) for turn in items]
    predictions = _answers(model, tokenizer, prompts, batch_size, device, dtype, max_new_tokens, progress)
    n = len(items) or 1
    pairs = list(zip(predictions, items, strict=True))
    return QAResult(
        "coqa",
        len(items),
        {
            "f1": 100 * sum(coqa_official_f1(p, t.answers) for p, t in pairs) / n,
            "f1_best_answer": 100 * sum(f1(p, t.answers) for p, t in pairs) / n,
            "exact_match": 100 * sum(exact_match(p, t.answers) for p, t in pairs) / n,
        },
        tuple(turn.question for turn in items),
        tuple(predictions),
        tuple(turn.answers for turn in items),
        {"stories": len({t.story_id for t in items}), "new_tokens": max_new_tokens},
    )
