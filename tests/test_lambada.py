from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.lambada import (
    STOP_WORDS,
    LambadaResult,
    encode_context,
    evaluate_lambada,
    evaluate_lambada_both,
    is_stop_word,
    read_lambada,
    split_last_word,
)
from gpt2cli.model import GPT, NotFinite
from tests.conftest import shared_data, tiny_gpt

N_CTX = 64


class StopBiased(torch.nn.Module):
    """A model whose argmax is a stop-word token nearly everywhere: the filter's gains become visible."""

    def __init__(self, inner: GPT, stop_ids: set[int]):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.register_buffer("bias", torch.zeros(inner.config.vocab_size))
        self.bias[sorted(stop_ids)] = 50.0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.inner(idx) + self.bias


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    return tiny_gpt(tokenizer.vocab_size, N_CTX)


@pytest.fixture(scope="module")
def biased(model: GPT, tokenizer: Tokenizer) -> StopBiased:
    return StopBiased(model, stop_token_ids(tokenizer)).eval()


@pytest.fixture(scope="module")
def passages(texts: list[str], tokenizer: Tokenizer, model: GPT, biased: StopBiased) -> list[str]:
    """Runs of 2-45 words from the sample articles (short ones and ones that need left truncation), plus,
    since a random model is almost never right, contexts completed with a one-token word chosen by the
    model itself: its plain argmax, its argmax among non-stop-word tokens, and the biased model's argmax
    (a stop word). These make plain successes, filter gains and filter losses happen."""
    rng = random.Random(0)
    words = " ".join(texts).split()
    stop_ids = sorted(stop_token_ids(tokenizer))
    out = []
    for _ in range(30):
        n = rng.randint(2, 45)
        start = rng.randrange(len(words) - n)
        out.append(" ".join(words[start : start + n]))
        context = " ".join(words[start : start + n - 1])
        ids = tokenizer.encode(context)[-N_CTX:]
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
            masked = logits.clone()
            masked[stop_ids] = -math.inf
            choices = (logits.argmax(), masked.argmax(), biased(torch.tensor([ids]))[0, -1].argmax())
        for token in choices:
            text = tokenizer.decode([int(token)])
            if re.fullmatch(r" [A-Za-z]+", text):
                out.append(context + text)
    return out


def reference(model: GPT, tokenizer: Tokenizer, passage: str, stop_ids: set[int] | None = None):
    """One example, no batching, an explicit loop over target tokens: (correct, nll, target tokens)."""
    context, target = split_last_word(passage)
    ctx, tgt = encode_context(tokenizer, context), tokenizer.encode(target)
    ctx = ctx[len(ctx) + len(tgt) - 1 - N_CTX :] if len(ctx) + len(tgt) - 1 > N_CTX else ctx
    correct, nll = True, 0.0
    if stop_ids is not None and target.strip().strip(".,!?\"'\u201c\u201d\u2018\u2019").lower() in STOP_WORDS:
        correct = False
    for j, token in enumerate(tgt):
        with torch.no_grad():
            logits = model(torch.tensor([ctx + tgt[:j]]))[0, -1]
        nll -= F.log_softmax(logits, dim=-1)[token].item()
        if j == 0 and stop_ids is not None:
            logits = logits.clone()
            for s in stop_ids - {token}:
                logits[s] = -math.inf
        correct = correct and int(logits.argmax()) == token
    return correct, nll, len(tgt)


def stop_token_ids(tokenizer: Tokenizer) -> set[int]:
    return {i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]).strip().lower() in STOP_WORDS}


@pytest.mark.parametrize(
    "passage, expected",
    [
        ("He said hello", ("He said", " hello")),
        ("line one\nword", ("line one\n", "word")),
        ("some kind of\n\nPower", ("some kind of\n\n", "Power")),
        ("tab\tword", ("tab\t", "word")),
        ("a  b", ("a ", " b")),
        ("x y \n", ("x", " y")),
        ("word", ("", "word")),
        ("she said “Sal", ("she said", " “Sal")),
        ("don't stop", ("don't", " stop")),
    ],
)
def test_split_last_word(passage: str, expected: tuple[str, str]):
    assert split_last_word(passage) == expected
    assert "".join(split_last_word(passage)) == passage.rstrip()


def test_split_empty_passage_is_an_error():
    with pytest.raises(Gpt2Error):
        split_last_word(" \n")


def test_read_lambada_real_file():
    passages = read_lambada(shared_data("lambada", "lambada_test.jsonl"))
    assert len(passages) == 5153
    assert all(p.split() for p in passages)


def test_context_and_target_are_tokenized_as_in_the_running_text():
    """The model reads what GPT-2 reads in the passage: "of\\n\\nPower" is "of", "\\n", "\\n", "Power"."""
    tokenizer = Tokenizer.load(shared_data("gpt2-tokenizer"))
    passages = [*read_lambada(shared_data("lambada", "lambada_test.jsonl")), "some kind of\n\nPower", "a\n \tb"]
    for passage in passages:
        context, target = split_last_word(passage)
        assert encode_context(tokenizer, context) + tokenizer.encode(target) == tokenizer.encode(passage.rstrip())


def test_read_lambada_malformed_line_is_named(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one two"}\n{"text": "three\n{"txt": "x"}\n', encoding="utf-8")
    with pytest.raises(Gpt2Error, match=r"bad\.jsonl:2:"):
        read_lambada(path)
    path.write_text('{"text": "one two"}\n{"txt": "x"}\n', encoding="utf-8")
    with pytest.raises(Gpt2Error, match=r"bad\.jsonl:2:"):
        read_lambada(path)


def test_read_lambada_ends_records_at_newlines_only(tmp_path: Path):
    """A JSON string may hold U+2028, U+0085 or \\x0c unescaped (json.dumps with ensure_ascii=False writes them so,
    as the hub writer does): JSON Lines records end at "\\n" alone, a "\\r" before it dropped."""
    texts = ["He said hello\u2028and then he left the room", "a\x85b\x0cc\x1ed the end"]
    path = tmp_path / "lambada_test.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert read_lambada(path) == texts
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert read_lambada(path) == texts


def test_an_overflowing_perplexity_is_infinite():
    """exp(1000) overflows a float: the perplexity is infinite (the worst score), not an OverflowError."""
    result = LambadaResult(examples=1, correct=0, nll_sum=1000.0, target_tokens=4)
    assert result.ppl == math.inf and result.ppl_per_token == pytest.approx(math.exp(250))


def test_a_model_with_nan_weights_scores_nothing(tokenizer: Tokenizer, passages: list[str]):
    broken = tiny_gpt(tokenizer.vocab_size, N_CTX)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(NotFinite, match=r"not finite \(nan\)"):
        evaluate_lambada_both(broken, tokenizer, passages[:3])


def test_matches_plain_reference(model: GPT, tokenizer: Tokenizer, passages: list[str]):
    result = evaluate_lambada(model, tokenizer, passages, batch_size=7)
    expected = [reference(model, tokenizer, p) for p in passages]
    assert result.examples == len(passages)
    assert result.per_example == [c for c, _, _ in expected]
    assert result.correct == sum(c for c, _, _ in expected) > 0  # the model's own completions are right
    assert result.nll_sum == pytest.approx(sum(n for _, n, _ in expected), rel=1e-5)
    assert result.target_tokens == sum(t for _, _, t in expected)
    assert result.ppl == pytest.approx(math.exp(result.nll_sum / len(passages)))
    assert result.ppl_per_token == pytest.approx(math.exp(result.nll_sum / result.target_tokens))
    assert result.accuracy == result.correct / len(passages)
    assert any(len(tokenizer.encode(p)) > N_CTX for p in passages)  # truncation was exercised


def test_batching_and_padding_do_not_change_results(model: GPT, tokenizer: Tokenizer, passages: list[str]):
    results = [evaluate_lambada(model, tokenizer, passages, batch_size=b) for b in (1, 3, 16, 64)]
    for r in results[1:]:
        assert r.per_example == results[0].per_example
        assert r.target_tokens == results[0].target_tokens
        assert r.nll_sum == pytest.approx(results[0].nll_sum, rel=1e-5)


@pytest.mark.parametrize("which", ["model", "biased"])
def test_stop_word_filter_matches_reference(
    which: str, request: pytest.FixtureRequest, tokenizer: Tokenizer, passages: list[str]
):
    net = request.getfixturevalue(which)
    stop_ids = stop_token_ids(tokenizer)
    plain = evaluate_lambada(net, tokenizer, passages, batch_size=5)
    filtered = evaluate_lambada(net, tokenizer, passages, stop_word_filter=True, batch_size=5)
    assert filtered.per_example == [reference(net, tokenizer, p, stop_ids)[0] for p in passages]
    assert filtered.nll_sum == plain.nll_sum and filtered.target_tokens == plain.target_tokens
    gained = lost = 0
    for p, before, after in zip(passages, plain.per_example, filtered.per_example, strict=True):
        context, target = split_last_word(p)
        if is_stop_word(target):
            assert not after  # the filter forbids predicting a stop word
            lost += before
        elif before:
            assert after  # excluding competitors never loses a non-stop-word target
        elif after:  # a gain: the plain argmax at the first target position was a stop-word token
            gained += 1
            ctx, tgt = encode_context(tokenizer, context), tokenizer.encode(target)
            ctx = ctx[max(0, len(ctx) + len(tgt) - 1 - N_CTX) :]
            with torch.no_grad():
                assert int(net(torch.tensor([ctx]))[0, -1].argmax()) in stop_ids
    if which == "biased":  # the biased model's argmax is a stop word: the filter must change results both ways
        assert gained > 0 and lost > 0


class Counting(torch.nn.Module):
    """Counts forward calls: the one-pass evaluation must run the model once per batch, not once per variant."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(idx)


@pytest.mark.parametrize("which", ["model", "biased"])
def test_both_variants_from_one_pass_equal_two_calls(
    which: str, request: pytest.FixtureRequest, tokenizer: Tokenizer, passages: list[str]
):
    net = Counting(request.getfixturevalue(which)).eval()
    plain, filtered = evaluate_lambada_both(net, tokenizer, passages, batch_size=4)
    assert net.calls == math.ceil(len(passages) / 4)
    assert plain == evaluate_lambada(net, tokenizer, passages, batch_size=4)
    assert filtered == evaluate_lambada(net, tokenizer, passages, stop_word_filter=True, batch_size=4)
    assert plain.per_example == [reference(net.inner, tokenizer, p)[0] for p in passages]
    if which == "biased":  # the two variants really differ, so the test would see them swapped or merged
        assert plain.per_example != filtered.per_example
