"""Language-modelling evaluation: de-tokenizers, the sliding-window rule, canonical unit counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import UsageError
from gpt2cli.eval.detokenize import ptb_detokenize, split_wikitext_articles, wikitext_detokenize
from gpt2cli.eval.lm import (
    LMResult,
    count_units,
    evaluate_text,
    evaluate_texts,
    perplexity,
    score_documents,
    score_tokens,
    sliding_windows,
)
from gpt2cli.model import GPT, GPTConfig, NotFinite
from tests.conftest import shared_data, tiny_gpt

# -- de-tokenizers -----------------------------------------------------------------------------------


def test_wikitext_detokenize_examples() -> None:
    text = (
        " \n = Robert <unk> = \n \n"
        ' He had a guest @-@ starring role , as " Craig " in " Teddy \'s Story " ( 2004 ) . \n'
        " It cost $ 1 @,@ 000 or 3 @.@ 5 % ; we don 't know ! The ships ' crews ... \n"
        " = = Career = = \n"
    )
    assert wikitext_detokenize(text) == (
        "\n= Robert <unk> =\n\n"
        'He had a guest-starring role, as "Craig" in "Teddy\'s Story" (2004).\n'
        "It cost $1,000 or 3.5%; we don't know! The ships' crews...\n"
        "== Career ==\n"
    )
    assert wikitext_detokenize(' He said " Stop . " Then left . ') == 'He said "Stop." Then left.'
    # a quote between punctuation or after a bracket still pairs, and every later pair on the line with it
    assert wikitext_detokenize(' the episode , " In Safe Hands " . He starred as " Scott " in it . ') == (
        'the episode, "In Safe Hands". He starred as "Scott" in it.'
    )
    assert ptb_detokenize('he said ( " yes " ) , and " no " .') == 'he said ("yes"), and "no".'
    assert wikitext_detokenize(" Combat ( ( English ) Battle ) . ") == "Combat ((English) Battle)."


def test_ptb_detokenize_examples() -> None:
    text = " no it was n't black monday \n the dow fell $ N or N % they 're <unk> \n"
    assert ptb_detokenize(text) == "no it wasn't black monday\nthe dow fell $N or N% they're <unk>\n"


def test_split_wikitext_articles() -> None:
    text = " \n = A = \n \n a . \n = = Sub = = \n b . \n \n = B = \n c . \n"
    articles = split_wikitext_articles(text)
    assert "".join(articles) == text
    assert [a.strip().splitlines()[0].strip() for a in articles] == ["= A =", "= B ="]


def test_wikitext_articles_split_at_newlines_only() -> None:
    """A U+2028 or \\x0c inside a line is no line end (str.splitlines breaks there): no title starts after one."""
    text = " \n = A = \n a\u2028 = B = \n b\x0c = C = \n = D = \n d . \n"
    articles = split_wikitext_articles(text)
    assert "".join(articles) == text and len(articles) == 2


def test_detokenizers_on_real_files() -> None:
    wiki = shared_data("wikitext-2", "wiki.test.tokens").read_text(encoding="utf-8")
    head = wiki[:200_000]
    out = wikitext_detokenize(head)
    for artifact in (" @-@ ", " @,@ ", " @.@ ", " , ", " . ", " 's ", "( "):
        assert artifact not in out, artifact
    assert out.count("\n") == head.count("\n")  # line structure kept: one <eos> per line still applies
    articles = split_wikitext_articles(wiki)
    assert "".join(articles) == wiki and all(a.lstrip(" \n").startswith("= ") for a in articles)
    assert len(articles) == 62  # the test split's " = Title = " lines
    ptb = shared_data("ptb", "ptb.test.txt").read_text(encoding="utf-8")
    out = ptb_detokenize(ptb)
    assert " n't" not in out and " 's " not in out and out.count("\n") == ptb.count("\n")
    # every pair of straight double quotes in WikiText encloses its words: "like this", never " like this "
    for line in wikitext_detokenize(wiki).split("\n"):
        quotes = [i for i, c in enumerate(line) if c == '"']
        for n, i in enumerate(quotes[: len(quotes) // 2 * 2]):
            assert line[i + 1] != " " if n % 2 == 0 else line[i - 1] != " ", line


# -- the window rule -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=50, pad_vocab_multiple=1)).eval()


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return torch.randint(0, 50, (45,), generator=torch.Generator().manual_seed(1)).tolist()


def plain_nll(model: GPT, ids: list[int], context: int, stride: int) -> float:
    """Each token j >= 1 scored once, from the start of the first window that reaches it: window k reads
    ids[k * stride : k * stride + context] and predicts up to ids[k * stride + context], so
    k = max(0, ceil((j - context) / stride))."""
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(ids)):
            begin = max(0, -(-(j - context) // stride)) * stride
            assert 1 <= j - begin <= context
            logits = model(torch.tensor([ids[begin:j]]))[0, -1]
            total -= F.log_softmax(logits.double(), -1)[ids[j]].item()
    return total


@pytest.mark.parametrize("context,stride", [(16, 16), (16, 8), (16, 5), (16, 1), (8, 3), (2, 1), (7, 7), (1, 1)])
def test_window_rule_matches_plain_loop(tiny: GPT, ids: list[int], context: int, stride: int) -> None:
    nll, scored = score_tokens(tiny, ids, context=context, stride=stride, batch_size=3)
    assert scored == len(ids) - 1
    assert nll == pytest.approx(plain_nll(tiny, ids, context, stride), abs=1e-4)


def test_windows_cover_each_token_once() -> None:
    for n in range(0, 40):
        for context, stride in [(16, 16), (16, 8), (16, 3), (5, 1)]:
            windows = sliding_windows(n, context, stride)
            targets = [j for _, end, first in windows for j in range(first + 1, end + 1)]
            assert targets == list(range(1, n)), (n, context, stride)
            assert all(end - begin <= context for begin, end, _ in windows)
            # every prediction after the first window sees at least context - stride + 1 tokens
            assert all(first + 1 - begin >= context - stride + 1 for begin, _, first in windows[1:])


def test_last_window_aligned_to_a_full_context(tiny: GPT, ids: list[int]) -> None:
    for n in range(0, 40):
        for context, stride in [(16, 16), (16, 8), (16, 3), (5, 1)]:
            windows = sliding_windows(n, context, stride, align_last=True)
            targets = [j for _, end, first in windows for j in range(first + 1, end + 1)]
            assert targets == list(range(1, n)), (n, context, stride)
            assert all(end - begin <= context and begin <= first for begin, end, first in windows)
            if windows and n - 1 >= context:
                begin, end, _ = windows[-1]
                assert end - begin == context  # the last window reads a full context
    # each prediction is scored from the window that scores it, as a plain per-window loop computes it
    nll, scored = score_tokens(tiny, ids, context=16, stride=16, align_last=True, batch_size=2)
    plain = 0.0
    with torch.no_grad():
        for begin, end, first in sliding_windows(len(ids), 16, 16, align_last=True):
            logp = F.log_softmax(tiny(torch.tensor([ids[begin:end]]))[0].double(), -1)
            plain -= sum(logp[j - begin, ids[j + 1]].item() for j in range(first, end))
    assert scored == len(ids) - 1 and nll == pytest.approx(plain, abs=1e-4)
    assert nll != pytest.approx(score_tokens(tiny, ids, context=16, stride=16)[0], abs=1e-4)


def test_batching_and_padding_do_not_change_the_sum(tiny: GPT, ids: list[int]) -> None:
    ref, _ = score_tokens(tiny, ids, context=16, stride=6, batch_size=1)
    for batch_size in (2, 3, 4, 64):  # the last batch holds a shorter, right-padded window
        nll, _ = score_tokens(tiny, ids, context=16, stride=6, batch_size=batch_size)
        assert nll == pytest.approx(ref, abs=1e-4)


def test_more_context_changes_the_nll(tiny: GPT, ids: list[int]) -> None:
    disjoint, n1 = score_tokens(tiny, ids, context=16, stride=16)
    sliding, n2 = score_tokens(tiny, ids, context=16, stride=4)
    assert n1 == n2 == len(ids) - 1
    assert abs(disjoint - sliding) > 1e-3
    short, _ = score_tokens(tiny, ids[:10], context=16, stride=16)  # one window: stride is irrelevant
    assert short == pytest.approx(score_tokens(tiny, ids[:10], context=16, stride=2)[0], abs=1e-5)


def test_bf16_autocast_is_close(tiny: GPT, ids: list[int]) -> None:
    ref, _ = score_tokens(tiny, ids, context=16, stride=8)
    bf16, _ = score_tokens(tiny, ids, context=16, stride=8, dtype=torch.bfloat16)
    assert bf16 == pytest.approx(ref, rel=2e-2)


def test_bad_arguments(tiny: GPT, ids: list[int]) -> None:
    with pytest.raises(UsageError):
        score_tokens(tiny, ids, context=32, stride=8)  # longer than the model's context
    with pytest.raises(UsageError):
        score_tokens(tiny, ids, context=8, stride=9)
    with pytest.raises(UsageError):
        score_tokens(tiny, ids, context=8, stride=0)
    assert score_tokens(tiny, ids[:1], context=8, stride=8) == (0.0, 0)


# -- evaluate_text and units -----------------------------------------------------------------------


def test_evaluate_text_scores_every_token_after_eot() -> None:
    tok = Tokenizer.from_merges([])  # bytes + <|endoftext|>
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=16, vocab_size=tok.vocab_size)).eval()
    text = "héllo wörld, a small test\nline two\n"
    ids = tok.encode(text)
    result = evaluate_text(model, tok, text, unit="byte", context=16, stride=8)
    nll, _ = score_tokens(model, [tok.eot_id, *ids], context=16, stride=8)
    assert result.tokens == len(ids) and result.nll_sum == pytest.approx(nll)
    assert result.units == len(text.encode()) and result.unit == "byte"
    assert result.bits_per_unit == pytest.approx(nll / len(text.encode()) / math.log(2))
    assert evaluate_text(model, tok, text, unit="char", context=16).units == len(text)
    as_tokens = evaluate_text(model, tok, text, unit="token", context=16)
    assert as_tokens.unit_ppl == pytest.approx(as_tokens.token_ppl)
    with pytest.raises(UsageError):
        evaluate_text(model, tok, text, unit="word", context=16)  # words of the original must be given
    with pytest.raises(UsageError):
        evaluate_text(model, tok, text, unit="sentence", units=3, context=16)


@pytest.mark.parametrize("align_last", [False, True])
def test_documents_share_batches_without_changing_their_scores(tiny: GPT, ids: list[int], align_last: bool) -> None:
    documents = [ids, ids[:7], ids[3:40], ids[:1], ids[5:22]]
    for context, stride in [(16, 16), (16, 5)]:
        alone = [score_tokens(tiny, d, context=context, stride=stride, batch_size=1, align_last=align_last)
                 for d in documents]  # fmt: skip
        together = score_documents(tiny, documents, context=context, stride=stride, batch_size=4,
                                   align_last=align_last)  # fmt: skip
        assert [n for _, n in together] == [n for _, n in alone] == [max(len(d) - 1, 0) for d in documents]
        for (nll, _), (ref, _) in zip(together, alone, strict=True):
            assert nll == pytest.approx(ref, abs=1e-4)


def test_evaluate_texts_equals_one_text_at_a_time() -> None:
    tok = Tokenizer.from_merges([])
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=16, vocab_size=tok.vocab_size)).eval()
    texts = ["first text, a little longer than one window of sixteen bytes", "x", "third\nand last"]
    results = evaluate_texts(model, tok, texts, unit="byte", context=16, stride=8, batch_size=3)
    for text, result in zip(texts, results, strict=True):
        alone = evaluate_text(model, tok, text, unit="byte", context=16, stride=8)
        assert (result.tokens, result.units) == (alone.tokens, alone.units) == (len(text.encode()), len(text.encode()))
        assert result.nll_sum == pytest.approx(alone.nll_sum, abs=1e-4)
    with_units = evaluate_texts(model, tok, texts, unit="word", units=[11, 1, 3], context=16)
    assert [r.units for r in with_units] == [11, 1, 3]
    with pytest.raises(UsageError, match="2 unit counts for 3 texts"):
        evaluate_texts(model, tok, texts, unit="word", units=[1, 2], context=16)


def test_lm_result_properties() -> None:
    r = LMResult(nll_sum=100.0, tokens=50, units=40, unit="word")
    assert r.token_ppl == pytest.approx(math.exp(2.0))
    assert r.unit_ppl == pytest.approx(math.exp(2.5))
    assert r.bits_per_unit == pytest.approx(2.5 / math.log(2))
    assert r.as_dict()["unit_ppl"] == pytest.approx(r.unit_ppl)


def test_word_units_small() -> None:
    assert count_units(" a b \n \n c ", "word") == 2 + 1 + 0 + 1 + 1 + 1  # a missing final newline: same count
    assert count_units(" a b \n \n c \n", "word") == 6


def test_word_units_end_lines_at_newlines_only() -> None:
    """U+2028, U+0085, \\x0c and \\x1e are whitespace inside a line, not line ends: the text the model scores
    keeps one newline per line (the de-tokenizers break at "\\n" alone), and that is the one <eos> counted."""
    text = " a\u2028b c \n d\x85e\x0cf\x1eg \n"
    assert count_units(text, "word") == 3 + 1 + 4 + 1
    assert ptb_detokenize(text).count("\n") == wikitext_detokenize(text).count("\n") == 2


def test_an_overflowing_perplexity_is_infinite() -> None:
    """A mean NLL above ~709.78 nats overflows exp(): the worst perplexity there is, not an OverflowError."""
    r = LMResult(nll_sum=2000.0, tokens=2000, units=2, unit="word")
    assert r.unit_ppl == math.inf and r.token_ppl == pytest.approx(math.e)
    assert perplexity(1.0, 0) != perplexity(1.0, 0)  # nothing counted: NaN, no score at all
    assert r.as_dict()["unit_ppl"] == math.inf


def test_a_model_with_nan_weights_scores_nothing(ids: list[int]) -> None:
    broken = tiny_gpt(50, 16)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(NotFinite, match=r"^the model's scores are not finite \(nan\)"):
        score_tokens(broken, ids, context=16, stride=8)


def test_word_units_of_real_files() -> None:
    wiki = shared_data("wikitext-2", "wiki.test.tokens").read_text(encoding="utf-8")
    assert count_units(wiki, "word") == 245_569
    ptb = shared_data("ptb", "ptb.test.txt").read_text(encoding="utf-8")
    assert count_units(ptb, "word") == 82_430
    wiki_valid = shared_data("wikitext-2", "wiki.valid.tokens").read_text(encoding="utf-8")
    assert count_units(wiki_valid, "word") == 217_646
    ptb_valid = shared_data("ptb", "ptb.valid.txt").read_text(encoding="utf-8")
    assert count_units(ptb_valid, "word") == 73_760
