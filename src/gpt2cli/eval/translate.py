"""Translation, zero-shot (paper section 3.7): WMT-14 English-French, both directions (tasks ``wmt14-en-fr`` and
``wmt14-fr-en``).

**Data.** newstest2014 English-French (3,003 segments), as two line-aligned files, one English and one
French, in either form (decided by the suffix):

* ``.sgm``: the original WMT release, ``newstest2014-fren-src.en.sgm`` and ``newstest2014-fren-ref.fr.sgm``
  (or ``-src.fr`` / ``-ref.en``: the same segments); the text of each ``<seg id="N">...</seg>`` line,
  stripped and not un-escaped, as sacrebleu extracts it;
* anything else: plain text, one segment per line (e.g. ``sacrebleu -t wmt14 -l en-fr --echo src`` and
  ``--echo ref``, saved as ``newstest2014.en`` and ``newstest2014.fr``).

**Task**, as the paper describes it: a context of ``"source sentence = target sentence"`` example pairs,
then ``"source sentence ="``; greedy decoding; the first generated sentence. Decisions:

* ``WMT_SHOTS`` = 5 pairs, one per line, in the direction evaluated (French first for fr-en). They are one
  fixed selection for the whole run: ``shots + 1`` pairs of ``pool`` (default: the items; pass the whole
  file when the items are a slice) with different sources, drawn with ``random.Random(seed)``
  (``fixed_examples``), of which each segment uses the first ``shots`` whose source is not its own: always
  ``shots`` pairs, also when the file repeats a segment. They come from the test file itself: no WMT training
  data is used.
* The first sentence is the generated text up to the first newline (a newstest segment is one line), stripped.
* At most ``WMT_MAX_NEW_TOKENS`` = 128 new tokens (the stage caps it at half a small model's context; the number
  used is recorded as ``new_tokens``); a prompt longer than the rest of the context keeps its last tokens (the
  earliest example pairs go first).
* BLEU is sacrebleu's ``corpus_bleu`` with its defaults (13a tokenization, case-sensitive); the signature
  is reported with the score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.eval.files import read_lines
from gpt2cli.eval.generation import fixed_examples, generate_continuations
from gpt2cli.model import GPT

WMT_SHOTS = 5
WMT_MAX_NEW_TOKENS = 128
DIRECTIONS = ("en-fr", "fr-en")
EXAMPLES_IN_REPORT = 3
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


@dataclass(frozen=True)
class SentencePair:
    en: str
    fr: str

    def side(self, language: str) -> str:
        return self.en if language == "en" else self.fr


@dataclass(frozen=True)
class TranslationResult:
    """Corpus BLEU and every translation (in input order); ``as_dict`` gives a few of them."""

    direction: str
    examples: int
    bleu: float
    signature: str
    translations: tuple[str, ...] = field(repr=False)
    sources: tuple[str, ...] = field(repr=False)
    references: tuple[str, ...] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": f"wmt14-{self.direction}",
            "examples": self.examples,
            "bleu": round(self.bleu, 4),
            "bleu_signature": self.signature,
            **self.settings,
            "samples": [
                {"source": s, "translation": t, "reference": r}
                for s, t, r in list(zip(self.sources, self.translations, self.references, strict=True))[
                    :EXAMPLES_IN_REPORT
                ]
            ],
        }


def read_segments(path: Path | str) -> list[str]:
    """Segments of one side of newstest: ``<seg>`` lines of an .sgm file, else every line of a plain file.
    An empty segment is an error naming file:line (it would misalign or silently score nothing)."""
    path = Path(path)
    lines = read_lines(path)
    segments = []
    sgm = path.suffix == ".sgm"
    for lineno, line in enumerate(lines, 1):
        if sgm:
            if not line.startswith("<seg"):
                continue
            m = _SEG.match(line)
            if m is None:
                raise Gpt2Error(f"{path}:{lineno}: a <seg> line without its </seg>")
            line = m.group(1)
        if not line.strip():
            raise Gpt2Error(f"{path}:{lineno}: empty segment")
        segments.append(line.strip())
    if sgm and not segments:
        raise Gpt2Error(f"{path}: no <seg> lines (is it an .sgm file?)")
    return segments


def read_wmt14(english: Path | str, french: Path | str) -> list[SentencePair]:
    """Line-aligned English and French segments of newstest2014 (see the module docstring for the formats)."""
    en, fr = read_segments(english), read_segments(french)
    if len(en) != len(fr):
        raise Gpt2Error(f"{english} has {len(en)} segments but {french} has {len(fr)}: the files are not aligned")
    return [SentencePair(e, f) for e, f in zip(en, fr, strict=True)]


def translation_shots(pool: Sequence[SentencePair], shots: int, seed: int, source: str = "en") -> list[SentencePair]:
    """The fixed candidate pairs: ``shots + 1`` of ``pool`` with different ``source`` sides, so that ``shots``
    remain without any one segment."""
    return fixed_examples(pool, shots, seed, "wmt14", key=lambda pair: pair.side(source))


def translation_prompt(item: SentencePair, candidates: Sequence[SentencePair], shots: int, direction: str) -> str:
    source, target = direction.split("-")
    examples = [c for c in candidates if c.side(source) != item.side(source)][:shots]
    lines = [f"{c.side(source)} = {c.side(target)}\n" for c in examples]
    return "".join(lines) + f"{item.side(source)} ="


def corpus_bleu(translations: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacrebleu's corpus BLEU (defaults: 13a tokenization, case-sensitive) and its signature."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    if not translations:
        return 0.0, str(bleu.get_signature())
    score = bleu.corpus_score(list(translations), [list(references)])
    return score.score, str(bleu.get_signature())


def evaluate_wmt14(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[SentencePair],
    *,
    direction: str,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    pool: Sequence[SentencePair] | None = None,
    shots: int = WMT_SHOTS,
    seed: int = 0,
    max_new_tokens: int = WMT_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> TranslationResult:
    """Greedy translations of the segments after ``shots`` example pairs; corpus BLEU against the other side."""
    if direction not in DIRECTIONS:
        raise UsageError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
    source, target = direction.split("-")
    candidates = translation_shots(pool if pool is not None else items, shots, seed, source)
    prompts = [tokenizer.encode(translation_prompt(item, candidates, shots, direction)) for item in items]
    gens = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=("\n",), batch_size=batch_size,
        device=device, dtype=dtype, progress=progress,
    )  # fmt: skip
    translations = [g.text.strip() for g in gens]
    references = [item.side(target) for item in items]
    bleu, signature = corpus_bleu(translations, references)
    return TranslationResult(
        direction,
        len(items),
        bleu,
        signature,
        tuple(translations),
        tuple(item.side(source) for item in items),
        tuple(references),
        {"shots": shots, "seed": seed, "new_tokens": max_new_tokens},
    )


def evaluate_wmt14_en_fr(
    model: GPT, tokenizer: Tokenizer, items: Sequence[SentencePair], **options: Any
) -> TranslationResult:
    """English to French (task ``wmt14-en-fr``); options as ``evaluate_wmt14``."""
    return evaluate_wmt14(model, tokenizer, items, direction="en-fr", **options)


def evaluate_wmt14_fr_en(
    model: GPT, tokenizer: Tokenizer, items: Sequence[SentencePair], **options: Any
) -> TranslationResult:
    """French to English (task ``wmt14-fr-en``); options as ``evaluate_wmt14``."""
    return evaluate_wmt14(model, tokenizer, items, direction="fr-en", **options)
