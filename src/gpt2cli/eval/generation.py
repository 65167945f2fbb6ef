"""Generation for the paper's generative zero-shot tasks (section 3: CoQA, CNN/DailyMail, WMT-14, NQ), and
their answer metrics.

``generate_continuations`` turns prompts (token ids) into continuations:

* **Decoding.** ``temperature == 0`` is greedy; otherwise top-k sampling (the paper's summaries: k = 2).
  Sampled rows each draw from their own ``torch.Generator`` seeded with a hash of ``(seed, prompt index)``,
  so a prompt's continuation does not depend on the batch size, on the other prompts, or on ``--limit``.
* **Stops.** A row ends at <|endoftext|> (not part of the text) or when its decoded text contains one of
  the ``stop`` strings (a newline by default); the text is cut before the first stop string, also when
  the stop string spans several tokens. ``ids`` keep the tokens up to the one that completed it.
* **Long prompts.** Prompt and new tokens must fit the context (no sliding window): a prompt longer than
  ``n_ctx - max_new_tokens`` keeps its *last* tokens, because the question sits at the end; what is lost is
  the start of the document or of the example pairs. ``dropped_tokens`` says how many went. A task that
  prefers another cut makes it before (``summarize`` keeps an article's start and the hint).
* **Batching.** The model has no attention mask, so a batch holds prompts of exactly equal token length
  (bucketed by length, longest first); results equal one-prompt-at-a-time generation.

The metrics are the official SQuAD/CoQA/NQ ones: ``normalize_answer`` (lower-case, no punctuation, no
articles, single spaces), ``exact_match`` and bag-of-words ``f1``, each the best over the gold answers;
``first_sentences`` cuts generated text after n sentences.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import GPT, KVCache, logits_needed, sample_next

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One continuation. ``text`` is cut before the first stop string; <|endoftext|> is in neither field."""

    ids: tuple[int, ...]
    text: str
    stopped: str  # "stop" (a stop string), "eot" or "length"
    prompt_tokens: int  # after left truncation
    dropped_tokens: int  # prompt tokens dropped from the left to fit the context


class _RowSampler:
    """A forward pass that samples each row's next token with that row's own generator.

    ``GPT.generate`` draws a whole batch from one generator, which ties a row's sample to its batch. This
    wrapper draws per row and returns logits whose only finite entry is the drawn token, so that
    ``generate`` run greedily (temperature 0) takes exactly that token; its cache and stops are reused.
    """

    def __init__(self, model: GPT, generators: list[torch.Generator], temperature: float, top_k: int | None) -> None:
        self.model, self.generators = model, generators
        self.temperature, self.top_k = temperature, top_k

    def __call__(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = True, top_k: int | None = None
    ) -> torch.Tensor:
        top = logits_needed(self.temperature, self.top_k)  # generate's top_k is its own greedy pick's
        logits = self.model(idx, cache, last_only=True, top_k=top)[:, -1].float()
        # identical prompts are computed once (GPT._prefill passes one row): each row still draws with its own
        # generator, or a duplicated prompt's continuation would depend on what shares its batch
        logits = logits.expand(len(self.generators), -1)
        choice = torch.cat(
            [
                sample_next(logits[r : r + 1], self.temperature, self.top_k, None, g)
                for r, g in enumerate(self.generators)
            ]
        )
        out = torch.full_like(logits, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out[:, None]


def row_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s generator: a hash of both, 32 bits (CPU generators use only 32)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest(), "little")


def fixed_examples(pool: Sequence[T], shots: int, seed: int, what: str, key: Callable[[T], Hashable]) -> list[T]:
    """The few-shot example pairs of a whole run: the first ``shots + 1`` entries of ``pool``, in an order shuffled
    with ``seed``, whose ``key`` (what a prompt compares with its item: the question, the source sentence) differs
    from every one before. At most one of them is an item's own, so ``shots`` always remain, also when the file
    repeats a question. A pool with fewer different keys is an error, not a prompt with fewer examples than the run
    records."""
    chosen: dict[Hashable, T] = {}
    for i in random.Random(seed).sample(range(len(pool)), len(pool)):
        chosen.setdefault(key(pool[i]), pool[i])
        if len(chosen) == shots + 1:
            return list(chosen.values())
    raise Gpt2Error(
        f"{what}: {len(chosen)} different pairs, but {shots} example pairs per prompt need {shots + 1} "
        "(a question's own pair is never its example)"
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one occurred."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


@torch.no_grad()
def generate_continuations(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop: Sequence[str] = ("\n",),
    stop_at_eot: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """One continuation per prompt, in input order (see the module docstring for the rules).

    ``temperature == 0`` is greedy; ``progress(done, total)`` is called after each batch. ``dtype`` other
    than float32 runs the model under autocast. An empty prompt starts from <|endoftext|>.
    """
    device = torch.device(device)
    n_ctx = model.config.n_ctx
    if not 1 <= max_new_tokens < n_ctx:
        raise UsageError(f"max_new_tokens must be between 1 and {n_ctx - 1} (the context), got {max_new_tokens}")
    if temperature < 0 or (top_k is not None and top_k < 1) or not 0 <= seed < 2**31:
        raise UsageError(f"need temperature >= 0, top-k >= 1, 0 <= seed < 2**31 (got {temperature}, {top_k}, {seed})")
    limit = n_ctx - max_new_tokens
    fitted = []
    for ids in prompts:
        ids = list(ids) or [tokenizer.eot_id]
        fitted.append(ids[-limit:])
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(fitted):
        buckets[len(ids)].append(i)
    batches = [
        rows[b : b + max(batch_size, 1)]
        for length in sorted(buckets, reverse=True)
        for rows in [buckets[length]]
        for b in range(0, len(rows), max(batch_size, 1))
    ]
    stop = tuple(s for s in stop if s)
    options = _Options(temperature, top_k, stop, tokenizer.eot_id if stop_at_eot else None, seed, max_new_tokens)
    results: list[Generation | None] = [None] * len(fitted)
    was_training = model.training
    model.eval()
    try:
        done = 0
        for rows in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                outputs = _generate_batch(model, tokenizer, [fitted[i] for i in rows], rows, options, device)
            for i, (ids, text, stopped) in zip(rows, outputs, strict=True):
                results[i] = Generation(ids, text, stopped, len(fitted[i]), max(len(prompts[i]) - limit, 0))
            done += len(rows)
            log.debug("generated %d/%d continuations", done, len(fitted))
            if progress is not None:
                progress(done, len(fitted))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class _Options:
    temperature: float
    top_k: int | None
    stop: tuple[str, ...]
    eot: int | None
    seed: int
    max_new_tokens: int


def _generate_batch(
    model: GPT, tokenizer: Tokenizer, prompts: list[list[int]], indices: list[int], opts: _Options, device: torch.device
) -> list[tuple[tuple[int, ...], str, str]]:
    """(new ids, text, why it stopped) for prompts of equal length, generated as one batch."""
    new: list[list[int]] = [[] for _ in prompts]
    stopped = ["length"] * len(prompts)

    def on_step(next_ids: torch.Tensor) -> torch.Tensor:
        finish = torch.zeros(len(prompts), dtype=torch.bool)
        for r, token in enumerate(next_ids.tolist()):
            if stopped[r] != "length":
                continue  # a finished row is padded by generate; its padding is not output
            if token == opts.eot:
                stopped[r] = "eot"
                continue
            new[r].append(token)
            if opts.stop and cut_at_stop(tokenizer.decode(new[r]), opts.stop)[1]:
                stopped[r] = "stop"
                finish[r] = True
        return finish

    forward = None
    if opts.temperature > 0:
        # one stream per prompt, so that samples do not depend on batching
        generators = [torch.Generator(device=device).manual_seed(row_seed(opts.seed, i)) for i in indices]
        forward = _RowSampler(model, generators, opts.temperature, opts.top_k)
    model.generate(
        torch.tensor(prompts, dtype=torch.long, device=device),
        opts.max_new_tokens,
        temperature=0.0,
        stop_ids=[opts.eot] if opts.eot is not None else [],
        on_step=on_step,
        forward=forward,
    )
    return [
        (tuple(ids), cut_at_stop(tokenizer.decode(ids), opts.stop)[0], why)
        for ids, why in zip(new, stopped, strict=True)
    ]


# -- metrics ---------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD/CoQA/NQ answer normalization: lower-case, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace (in that order), so that "The Beatles." matches "beatles"."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str] | str) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer, else 0.0."""
    golds = [golds] if isinstance(golds, str) else golds
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1_one(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)  # an empty answer is right only against an empty gold
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Sequence[str] | str) -> float:
    """Bag-of-words F1 between the normalized prediction and the best-matching gold answer (0 to 1)."""
    golds = [golds] if isinstance(golds, str) else golds
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


# A sentence ends at ., ! or ? (possibly several, then closing quotes or brackets) followed by whitespace and
# an upper-case letter, a digit or an opening quote; or at a line break. Not after a title abbreviation
# ("Mr. Smith") or a single-letter initial ("U.S. officials", "J. Smith"). A heuristic, as any splitter is.
_SENTENCE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]*[A-Z0-9])|\n""")
_ABBREVIATIONS_TEXT = "mr mrs ms dr prof st jr sr gen col lt sgt capt gov sen rep rev mt ft vs etc"
_ABBREVIATIONS = frozenset(_ABBREVIATIONS_TEXT.split())


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text``, joined by single spaces (the paper's summaries keep 3)."""
    sentences: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.group() != "\n":
            word = text[start : m.start()].split()[-1:] or [""]
            last = word[0].rsplit(".", 1)[-1] if m.group().startswith(".") else ""
            if m.group().startswith(".") and (last.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Za-z]", last)):
                continue
        if piece := " ".join(text[start : m.end()].split()):
            sentences.append(piece)
        start = m.end()
        if len(sentences) >= n:
            return " ".join(sentences[:n])
    if rest := " ".join(text[start:].split()):
        sentences.append(rest)
    return " ".join(sentences[:n])
