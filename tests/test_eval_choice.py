from __future__ import annotations

import random

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.choice import best_choice, fit_context, score_choices
from gpt2cli.model import GPT, GPTConfig, KVCache, NotFinite

N_CTX, VOCAB = 32, 97


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=N_CTX, vocab_size=VOCAB)).eval()


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def plain(model: GPT, context: list[int], candidates: list[list[int]]) -> list[tuple[float, list[float]]]:
    """Each candidate on its own: one full forward pass (no cache) of the truncated context + the candidate."""
    keep = N_CTX - max(map(len, candidates)) + 1
    ctx = context[-keep:]
    out = []
    for cand in candidates:
        seq = ctx + cand
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0].double(), dim=-1)
        per_token = [logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cand)]
        out.append((sum(per_token), per_token))
    return out


def check(model: GPT, context: list[int], candidates: list[list[int]], batch_size: int) -> None:
    scores = score_choices(model, context, candidates, batch_size=batch_size)
    expected = plain(model, context, candidates)
    assert [s.tokens for s in scores] == [len(c) for c in candidates]
    for s, (total, per_token) in zip(scores, expected, strict=True):
        assert s.logprob == pytest.approx(total, abs=1e-4)
        assert s.token_logprobs == pytest.approx(per_token, abs=1e-4)
        assert s.logprob_from(1) == pytest.approx(sum(per_token[1:]), abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_unequal_lengths_match_plain_forward(model: GPT, batch_size: int):
    rng = random.Random(batch_size)
    context = ids(rng, 10)
    candidates = [ids(rng, n) for n in (1, 4, 2, 9, 1, 6, 3)]
    check(model, context, candidates, batch_size)


def test_one_token_candidates_need_no_second_pass(model: GPT):
    rng = random.Random(1)
    check(model, ids(rng, 5), [[t] for t in ids(rng, 5)], 4)


def test_context_truncated_so_the_longest_candidate_fits(model: GPT):
    rng = random.Random(2)
    context = ids(rng, 3 * N_CTX)
    check(model, context, [ids(rng, n) for n in (2, 7, 1)], 2)
    check(model, context, [ids(rng, N_CTX), ids(rng, 3)], 2)  # a full-context candidate keeps one context token
    assert fit_context(list(range(50)), 7, N_CTX) == list(range(24, 50))  # 32 - 7 + 1 = 26 tokens
    assert fit_context([1, 2], 7, N_CTX) == [1, 2]
    with pytest.raises(Gpt2Error, match="does not fit"):
        score_choices(model, context, [ids(rng, N_CTX + 1)])


def test_results_do_not_depend_on_batch_size(model: GPT):
    rng = random.Random(3)
    context, candidates = ids(rng, 12), [ids(rng, rng.randint(1, 8)) for _ in range(10)]
    reference = score_choices(model, context, candidates, batch_size=1)
    for b in (2, 5, 10):
        got = score_choices(model, context, candidates, batch_size=b)
        assert [s.logprob for s in got] == pytest.approx([s.logprob for s in reference], abs=1e-5)


def test_bfloat16_autocast_is_close(model: GPT):
    rng = random.Random(4)
    context, candidates = ids(rng, 12), [ids(rng, n) for n in (3, 5)]
    full = score_choices(model, context, candidates)
    half = score_choices(model, context, candidates, dtype=torch.bfloat16)
    assert [s.logprob for s in half] == pytest.approx([s.logprob for s in full], abs=0.1)


def test_bad_input_and_mode_restored(model: GPT):
    assert score_choices(model, [1, 2], []) == []
    with pytest.raises(Gpt2Error, match="empty context"):
        score_choices(model, [], [[1]])
    with pytest.raises(Gpt2Error, match="no tokens"):
        score_choices(model, [1], [[1], []])
    model.train()
    try:
        score_choices(model, [1, 2], [[3, 4]])
        assert model.training
    finally:
        model.eval()


def test_best_choice_takes_the_first_of_ties():
    assert best_choice([-3.0, -1.0, -2.0]) == 1
    assert best_choice([-1.0, -1.0]) == 0
    with pytest.raises(Gpt2Error):
        best_choice([])


def test_scores_that_are_not_finite_are_an_error_not_a_choice():
    """Every comparison with NaN is false, so max keeps the first candidate: a NaN model would get the share of
    examples whose answer is listed first as its accuracy."""
    for scores in ([float("nan"), -1.0], [-1.0, float("nan")], [-2.0, float("-inf")]):
        with pytest.raises(NotFinite, match=r"^the model's scores are not finite \((nan|-inf)\): "):
            best_choice(scores)


def test_several_tokens_after_a_cache_equal_a_full_forward(model: GPT):
    """The model change behind the scorer: a chunk of new tokens after a filled cache, expanded to rows."""
    rng = random.Random(5)
    prefix, rows = ids(rng, 9), [ids(rng, 6) for _ in range(3)]
    cache = KVCache(model.config)
    with torch.no_grad():
        model(torch.tensor([prefix]), cache)
        expanded = cache.expand(len(rows))
        got = model(torch.tensor(rows), expanded)
        want = model(torch.tensor([prefix + r for r in rows]))[:, len(prefix) :]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cache.size == len(prefix) and expanded.size == len(prefix) + 6  # the original is untouched
    with torch.no_grad():
        small = cache.expand(2, len(prefix) + 6)  # room for just the continuations
        torch.testing.assert_close(model(torch.tensor(rows[:2]), small), want[:2], atol=1e-5, rtol=1e-5)
        assert small.layers[0].k is not None and small.layers[0].k.shape[2] == len(prefix) + 6
    with pytest.raises(Gpt2Error, match="one row"):
        expanded.expand(2)
    with pytest.raises(Gpt2Error, match="does not fit"):
        cache.expand(2, len(prefix) - 1)
