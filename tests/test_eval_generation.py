from __future__ import annotations

import copy
import random

import pytest
import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import UsageError
from gpt2cli.eval.generation import (
    exact_match,
    f1,
    first_sentences,
    generate_continuations,
    normalize_answer,
)
from gpt2cli.model import GPT
from tests.conftest import tiny_gpt

N_CTX = 48


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    return tiny_gpt(tokenizer.vocab_size, N_CTX)


@pytest.fixture(scope="module")
def eot_prone(model: GPT, tokenizer: Tokenizer) -> GPT:
    """The model with a large <|endoftext|> embedding: its logit is often the largest, so rows end on it."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.transformer.wte.weight[tokenizer.eot_id] *= 40
    return other


@pytest.fixture(scope="module")
def prompts(texts: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Prompts of 1-70 tokens, several of each length (batches), some longer than the context allows."""
    rng = random.Random(0)
    ids = tokenizer.encode(" ".join(texts))
    out = []
    for n in (1, 3, 3, 3, 7, 7, 12, 12, 12, 12, 25, 40, 70, 70):
        start = rng.randrange(len(ids) - n)
        out.append(ids[start : start + n])
    return [*out, []]


def plain_greedy(
    model: GPT, tokenizer: Tokenizer, prompt: list[int], max_new: int, stop: tuple[str, ...], eot: bool = True
) -> tuple[list[int], str, str]:
    """Argmax over full forward passes, one prompt at a time, no cache: (new ids, cut text, why it stopped)."""
    context = (prompt or [tokenizer.eot_id])[-(N_CTX - max_new) :]
    new: list[int] = []
    why = "length"
    for _ in range(max_new):
        with torch.no_grad():
            token = int(model(torch.tensor([context + new]))[0, -1].argmax())
        if eot and token == tokenizer.eot_id:
            why = "eot"
            break
        new.append(token)
        if any(s in tokenizer.decode(new) for s in stop):
            why = "stop"
            break
    text = tokenizer.decode(new)
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return new, text, why


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_greedy_matches_plain_loop(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]], batch_size: int):
    out = generate_continuations(model, tokenizer, prompts, max_new_tokens=10, stop=(), batch_size=batch_size)
    assert len(out) == len(prompts)
    for prompt, gen in zip(prompts, out, strict=True):
        ids, text, why = plain_greedy(model, tokenizer, prompt, 10, ())
        assert (list(gen.ids), gen.text, gen.stopped) == (ids, text, why)
        assert gen.prompt_tokens == min(max(len(prompt), 1), N_CTX - 10)
        assert gen.dropped_tokens == max(len(prompt) - (N_CTX - 10), 0)
    assert any(g.dropped_tokens for g in out)  # left truncation was exercised


def test_stop_strings_spanning_tokens(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]]):
    """Stop strings made of the last character of the 4th new token and the first of the 5th."""
    stops = []
    for prompt in prompts:
        ids, text, _ = plain_greedy(model, tokenizer, prompt, 12, ())
        a, b = tokenizer.decode(ids[:4]), tokenizer.decode(ids[4:5])
        stops.append((a[-1:] + b[:1]) if a and b else "\n")
    for batch_size in (1, 4):
        out = [
            generate_continuations(model, tokenizer, [p], max_new_tokens=12, stop=("\n", s), batch_size=batch_size)[0]
            for p, s in zip(prompts, stops, strict=True)
        ]
        for prompt, s, gen in zip(prompts, stops, out, strict=True):
            ids, text, why = plain_greedy(model, tokenizer, prompt, 12, ("\n", s))
            assert (list(gen.ids), gen.text, gen.stopped) == (ids, text, why)
            assert "\n" not in gen.text and s not in gen.text
        assert sum(g.stopped == "stop" for g in out) >= len(prompts) // 2
    # the same with all prompts in shared batches, one stop set for all
    together = generate_continuations(model, tokenizer, prompts, max_new_tokens=12, stop=tuple(stops), batch_size=8)
    alone = [plain_greedy(model, tokenizer, p, 12, tuple(stops)) for p in prompts]
    assert [(list(g.ids), g.text, g.stopped) for g in together] == [(i, t, w) for i, t, w in alone]


def test_end_of_text_ends_a_row(eot_prone: GPT, tokenizer: Tokenizer, prompts: list[list[int]]):
    out = generate_continuations(eot_prone, tokenizer, prompts, max_new_tokens=10, stop=("\n",), batch_size=4)
    expected = [plain_greedy(eot_prone, tokenizer, p, 10, ("\n",)) for p in prompts]
    assert [(list(g.ids), g.text, g.stopped) for g in out] == [(i, t, w) for i, t, w in expected]
    assert any(g.stopped == "eot" for g in out) and any(g.stopped != "eot" for g in out)
    assert all(tokenizer.eot_id not in g.ids for g in out)
    kept = generate_continuations(eot_prone, tokenizer, prompts, max_new_tokens=10, stop=(), stop_at_eot=False)
    assert any(tokenizer.eot_id in g.ids for g in kept) and all(g.stopped == "length" for g in kept)


def test_top_k_sampling_is_seeded_and_independent_of_batching(
    model: GPT, tokenizer: Tokenizer, prompts: list[list[int]]
):
    def run(batch_size: int, seed: int = 1, items: list[list[int]] = prompts) -> list[tuple[int, ...]]:
        gens = generate_continuations(
            model, tokenizer, items, max_new_tokens=8, temperature=1.0, top_k=2, stop=(), seed=seed,
            batch_size=batch_size,
        )  # fmt: skip
        return [g.ids for g in gens]

    one = run(1)
    assert run(5) == one == run(16)
    assert run(5, seed=2) != one
    assert run(4, items=prompts[:6]) == one[:6]  # a prefix of the items (a --limit) samples the same
    greedy = generate_continuations(model, tokenizer, prompts, max_new_tokens=8, stop=())
    assert [g.ids for g in greedy] != one  # sampling does not reduce to argmax
    for prompt, ids in zip(prompts, one, strict=True):  # every sampled token is one of the 2 most likely
        context = (prompt or [tokenizer.eot_id])[-(N_CTX - 8) :]
        for j, token in enumerate(ids):
            with torch.no_grad():
                logits = model(torch.tensor([context + list(ids[:j])]))[0, -1]
            assert token in logits.topk(2).indices.tolist()


def test_a_repeated_prompt_samples_the_same_in_any_batch(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]]):
    """A batch of identical prompts (the same article twice) is computed once, yet each row draws with its own
    generator: a row's text never depends on what shares its batch."""

    def run(batch_size: int) -> list[tuple[int, ...]]:
        gens = generate_continuations(
            model, tokenizer, [prompts[8]] * 3, max_new_tokens=8, temperature=1.0, top_k=2, stop=(), seed=1,
            batch_size=batch_size,
        )  # fmt: skip
        return [g.ids for g in gens]

    one = run(1)
    assert run(8) == one == run(2) and len(set(one)) > 1  # rows of one prompt still differ: their own seeds


def test_bad_options(model: GPT, tokenizer: Tokenizer):
    with pytest.raises(UsageError, match="max_new_tokens"):
        generate_continuations(model, tokenizer, [[1]], max_new_tokens=N_CTX)
    with pytest.raises(UsageError):
        generate_continuations(model, tokenizer, [[1]], max_new_tokens=2, temperature=1.0, top_k=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Beatles.", "beatles"),
        ("  An  apple a day,  the doctor! ", "apple day doctor"),
        ("Theater and anthem", "theater and anthem"),  # articles only as whole words
        ("U.S.A", "usa"),
        ("14 December 1972 UTC", "14 december 1972 utc"),
        ("a", ""),
        ("don't", "dont"),
    ],
)
def test_normalize_answer(text: str, expected: str):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("the Beatles", ["Beatles", "John Lennon"]) == 1.0
    assert exact_match("Beatles!", "the beatles") == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1():
    assert f1("the cat sat", ["a cat sat down"]) == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert f1("cat cat", ["cat"]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # counts are clipped
    assert f1("red", ["blue", "Red."]) == 1.0  # best gold
    assert f1("dog", ["cat"]) == 0.0
    assert f1("the", ["a"]) == 1.0  # both empty after normalization
    assert f1("the", ["cat"]) == 0.0
    assert f1("x", []) == 0.0


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("One. Two! Three? Four.", 3, "One. Two! Three?"),
        ("Mr. Smith went home. He slept.", 1, "Mr. Smith went home."),
        ("Officials in the U.S. said no. Then yes.", 1, "Officials in the U.S. said no."),
        ('He said "Stop." Then he left. Later.', 2, 'He said "Stop." Then he left.'),
        ("first line\nsecond line\n\nthird", 2, "first line second line"),
        ("version 2.5 is out. It costs 3.99 now", 5, "version 2.5 is out. It costs 3.99 now"),
        ("  no ending  ", 3, "no ending"),
        ("", 3, ""),
    ],
)
def test_first_sentences(text: str, n: int, expected: str):
    assert first_sentences(text, n) == expected


def test_autocast_dtype_runs_and_training_mode_is_restored(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]]):
    model.train()
    try:
        out = generate_continuations(
            model, tokenizer, prompts[:6], max_new_tokens=5, temperature=1.0, top_k=2, dtype=torch.bfloat16
        )
        assert model.training
    finally:
        model.eval()
    assert len(out) == 6 and all(1 <= len(g.ids) <= 5 or g.stopped != "length" for g in out)
