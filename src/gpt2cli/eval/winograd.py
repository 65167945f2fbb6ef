"""Winograd Schema Challenge, WSC273 (paper section 3.4): resolve a pronoun by scoring each candidate in its place.

Data is Ernest Davis's ``WSCollection.xml``; WSC273 is its first 273 schemas, read in document order. Each
schema gives ``<text><txt1/><pron/><txt2/></text>``, two ``<answer>``s and ``<correctAnswer>`` (A or B, seen as
"A", "A." and with stray spaces). The text of every element is whitespace-normalised (``" ".join(s.split())``,
which also turns the file's few non-breaking spaces into spaces) and used verbatim otherwise.

Both scoring methods of Trinh & Le (2018), "A Simple Method for Commonsense Reasoning", are reported:

* **full**: the probability of the whole sentence with the pronoun replaced by the candidate;
* **partial**: the probability of the words after the pronoun (``txt2``), conditioned on ``txt1`` + candidate.

The sentence is ``txt1 + " " + candidate + " " + txt2`` (no space before a ``txt2`` that starts with
punctuation, as in "punished them."), scored after an ``<|endoftext|>``. The context ``txt1`` is the same for
both candidates, so it is computed once and left out of the full score: ``log P(sentence) - log P(txt1)`` ranks
the candidates exactly as ``log P(sentence)`` does. Context, candidate (with the space before it) and the rest
are encoded separately and concatenated; the winner is the higher score, the first answer (A) on an exact tie
(possible in partial scoring only if ``txt2`` were empty, which no WSC273 schema is).

Candidate adaptation (the answers are written as noun phrases, not as what grammatically replaces the pronoun):

* **Possessive pronouns** (his, her, its, their, my, our, your) get ``'s`` appended to the candidate unless it
  already ends in ``'s`` or ``'`` ("his bishop" -> "Tom's bishop", "her education" -> "Emma's education").
  "her" counts as possessive when a word follows it, else as the object pronoun; in WSC273 every "her" is
  possessive.
* **Possessive answers for a non-possessive personal pronoun** lose their ``'s`` ("Ann's" for "she" -> "Ann",
  "Charlie's" for "He" -> "Charlie"): the answer names the person. For "it" the ``'s`` stays, since there the
  answer is an elliptical noun phrase ("Tina's [drawing] did look much better").
* **Pronoun answers** take the grammatical case of the replaced pronoun ("him" for "he" -> "he", schemas 50/51).
* **Case**: a capitalised pronoun (sentence start) capitalises the candidate's first letter ("the cake" ->
  "The cake"); for a lower-case pronoun, a candidate starting with a capitalised determiner ("The", "A", "My",
  ...) is lower-cased there ("The city councilmen" -> "the city councilmen"). Proper names are untouched.
  Bare nouns such as "meeting" or "daughter" get no article: the answers are used as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.choice import best_choice, score_choices
from gpt2cli.model import GPT

WSC273 = 273
_POSSESSIVE = frozenset({"his", "her", "its", "their", "my", "our", "your"})
_SUBJECT_FORM = {"him": "he", "her": "she", "them": "they", "me": "I", "us": "we"}
_OBJECT_FORM = {"he": "him", "she": "her", "they": "them", "i": "me", "we": "us"}
_DETERMINERS = frozenset({"the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
                          "their", "some"})  # fmt: skip
_NO_SPACE_BEFORE = tuple(".,;:!?)")


@dataclass(frozen=True)
class WSCSchema:
    """One schema: ``text1 pronoun text2`` and its candidate antecedents, whitespace-normalised."""

    text1: str
    pronoun: str
    text2: str
    answers: tuple[str, ...]
    correct: int  # index into answers: A = 0, B = 1
    line: int = field(default=0, compare=False)  # of its <schema> tag in the file, for messages


@dataclass(frozen=True)
class WSCResult:
    examples: int
    correct_full: int
    correct_partial: int
    predictions_full: list[int] = field(default_factory=list, repr=False)
    predictions_partial: list[int] = field(default_factory=list, repr=False)
    scores_full: list[tuple[float, ...]] = field(default_factory=list, repr=False)  # per answer, nats
    scores_partial: list[tuple[float, ...]] = field(default_factory=list, repr=False)

    @property
    def acc_full(self) -> float:
        """Accuracy in % with full scoring."""
        return 100.0 * self.correct_full / self.examples if self.examples else 0.0

    @property
    def acc_partial(self) -> float:
        """Accuracy in % with partial scoring."""
        return 100.0 * self.correct_partial / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"acc_full": self.acc_full, "acc_partial": self.acc_partial, "correct_full": self.correct_full,
                "correct_partial": self.correct_partial, "examples": self.examples}  # fmt: skip


@dataclass
class _Element:
    tag: str
    line: int
    children: list[_Element] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)

    def text(self) -> str:
        """All character data inside, whitespace-normalised."""
        return " ".join("".join(self._chunks()).split())

    def _chunks(self) -> list[str]:
        return [*self.chunks, *(c for child in self.children for c in child._chunks())]


def _parse_xml(path: Path) -> _Element:
    """The document as a small tree that remembers each element's line (ElementTree forgets them)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Gpt2Error(f"cannot read {path}: {e}") from None
    parser = expat.ParserCreate()
    root = _Element("", 0)
    stack = [root]

    def start(tag: str, _attrs: dict[str, str]) -> None:
        element = _Element(tag, parser.CurrentLineNumber)
        stack[-1].children.append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def chars(data: str) -> None:
        stack[-1].chunks.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise Gpt2Error(f"{path}:{e.lineno}: not well-formed XML ({expat.ErrorString(e.code)})") from None
    return root


def _one(path: Path, parent: _Element, tag: str) -> _Element:
    found = [c for c in parent.children if c.tag == tag]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise Gpt2Error(f"{path}:{parent.line}: <{parent.tag}> has {what} <{tag}> elements, expected one")
    return found[0]


def _schema(path: Path, element: _Element) -> WSCSchema:
    text = _one(path, element, "text")
    text1, pron, text2 = (_one(path, text, tag).text() for tag in ("txt1", "pron", "txt2"))
    if not pron:
        raise Gpt2Error(f"{path}:{text.line}: the schema's <pron> is empty")
    if not text2:  # partial scoring scores what follows the pronoun: with nothing there, every answer ties
        raise Gpt2Error(f"{path}:{text.line}: the schema's <txt2> is empty")
    answers = [a for a in _one(path, element, "answers").children if a.tag == "answer"]
    for a in answers:
        if not a.text():
            raise Gpt2Error(f"{path}:{a.line}: empty <answer>")
    if len(answers) < 2:
        raise Gpt2Error(f"{path}:{element.line}: the schema has {len(answers)} <answer>, expected at least 2")
    mark = _one(path, element, "correctAnswer")
    letter = mark.text().rstrip(".").strip()
    index = ord(letter.upper()) - ord("A") if len(letter) == 1 else -1
    if not 0 <= index < len(answers):
        raise Gpt2Error(f"{path}:{mark.line}: <correctAnswer> {mark.text()!r} is not one of the answer letters "
                        f"A-{chr(ord('A') + len(answers) - 1)}")  # fmt: skip
    return WSCSchema(text1, pron, text2, tuple(a.text() for a in answers), index, element.line)


def read_wsc(path: Path | str, limit: int | None = WSC273) -> list[WSCSchema]:
    """The first ``limit`` schemas of a Winograd collection XML (all with ``limit=None``); WSC273 by default.

    A malformed schema is an error naming file:line, not a skip: a silently smaller set would change the
    reported accuracy. So is a file with fewer than ``limit`` schemas.
    """
    path = Path(path)
    root = _parse_xml(path)
    collection = root.children[0]  # expat guarantees exactly one document element
    if collection.tag != "collection":
        raise Gpt2Error(f"{path}:{collection.line}: the root element is <{collection.tag}>, expected <collection>")
    elements = [c for c in collection.children if c.tag == "schema"]
    if limit is not None and len(elements) < limit:
        raise Gpt2Error(f"{path} has {len(elements)} schemas, fewer than the {limit} asked for")
    if not elements:
        raise Gpt2Error(f"{path} has no <schema> elements")
    return [_schema(path, e) for e in elements[:limit]]


def _is_possessive(schema: WSCSchema) -> bool:
    pron = schema.pronoun.lower()
    if pron == "her":  # object or possessive: possessive when a word follows
        return schema.text2[:1].isalnum()
    return pron in _POSSESSIVE


def adapt_answer(schema: WSCSchema, answer: str) -> str:
    """The answer as it reads in the pronoun's place (case, possessive, pronoun form; see the module docstring)."""
    pron = schema.pronoun.lower()
    text = answer
    if _is_possessive(schema):
        if not text.endswith(("'s", "'")):
            text += "'s"
    else:
        if pron != "it" and text.endswith("'s"):
            text = text[:-2]
        lower = text.lower()
        if pron in _OBJECT_FORM and lower in _SUBJECT_FORM:  # a subject pronoun replaced by "him"
            text = _SUBJECT_FORM[lower]
        elif pron in _SUBJECT_FORM and lower in _OBJECT_FORM:  # an object pronoun replaced by "he"
            text = _OBJECT_FORM[lower]
    if schema.pronoun[:1].isupper() or not schema.text1:
        return text[:1].upper() + text[1:]
    if text.split()[0].lower() in _DETERMINERS:
        return text[:1].lower() + text[1:]
    return text


def wsc_texts(schema: WSCSchema) -> tuple[str, list[tuple[str, str]]]:
    """(context, one (candidate part, rest) per answer): ``context + candidate part + rest`` is the sentence with
    the pronoun replaced by that answer; the candidate part carries the space before it, the rest the one
    before ``text2``."""
    rest = schema.text2
    if rest and not rest.startswith(_NO_SPACE_BEFORE):
        rest = " " + rest
    lead = " " if schema.text1 else ""
    return schema.text1, [(lead + adapt_answer(schema, a), rest) for a in schema.answers]


@torch.no_grad()
def evaluate_wsc(
    model: GPT,
    tokenizer: Tokenizer,
    schemas: Sequence[WSCSchema],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> WSCResult:
    """Accuracy of full and partial scoring (module docstring); both come from one scoring pass per schema."""
    scores_full: list[tuple[float, ...]] = []
    scores_partial: list[tuple[float, ...]] = []
    for schema in schemas:
        context, parts = wsc_texts(schema)
        ctx = [tokenizer.eot_id, *tokenizer.encode(context)]
        encoded = [(tokenizer.encode(cand), tokenizer.encode(rest)) for cand, rest in parts]
        scores = score_choices(model, ctx, [c + r for c, r in encoded], batch_size=batch_size, device=device,
                               dtype=dtype)  # fmt: skip
        scores_full.append(tuple(s.logprob for s in scores))
        scores_partial.append(tuple(s.logprob_from(len(c)) for s, (c, _) in zip(scores, encoded, strict=True)))
    full = [best_choice(s) for s in scores_full]
    partial = [best_choice(s) for s in scores_partial]
    answers = [s.correct for s in schemas]
    return WSCResult(len(schemas), sum(p == a for p, a in zip(full, answers, strict=True)),
                     sum(p == a for p, a in zip(partial, answers, strict=True)), full, partial, scores_full,
                     scores_partial)  # fmt: skip
