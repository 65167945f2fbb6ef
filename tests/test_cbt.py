from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.cbt import CBT_TASKS, CBTExample, cbt_detokenize, cbt_texts, evaluate_cbt, read_cbt
from gpt2cli.model import GPT, GPTConfig, NotFinite
from tests.conftest import tiny_gpt


def ptb_tokens(text: str) -> list[str]:
    """Sample prose split the way CBT is: punctuation and "'s" as their own tokens."""
    return re.findall(r"'s|[A-Za-z]+(?=n't)|n't|[A-Za-z0-9]+|[^\sA-Za-z0-9]", text)


def make_examples(texts: list[str], n: int, seed: int = 0) -> list[CBTExample]:
    """CBT-like examples from the sample articles, with quotes, possessives and blanks in every position."""
    rng = random.Random(seed)
    words = ptb_tokens(" ".join(texts))
    nouns = sorted({w.lower() for w in words if w.isalpha() and len(w) > 3})
    examples = []
    for k in range(n):

        def sentence() -> list[str]:
            start = rng.randrange(len(words) - 20)
            return words[start : start + rng.randint(2, 9)]

        sentences = [sentence() for _ in range(20)]
        sentences[3] = ["``", *sentences[3], ",", "''", "said", "the", "cat", "'s", "friend", "."]
        sentences[7] = ["`", *sentences[7], "'", "."]
        candidates = rng.sample(nouns, 10)
        body = sentence()
        where = k % 4
        if where == 0:  # blank at the start of the question
            question = ["XXXXX", *body, "."]
        elif where == 1:  # blank right after an opening quote
            question = [*body, ":", "``", "XXXXX", "!", "''"]
        elif where == 2:  # a possessive blank
            question = [*body, "the", "XXXXX", "'s", "hat", "."]
        else:
            question = [*body[:2], "XXXXX", *body[2:], "?"]
        examples.append(CBTExample(tuple(map(" ".join, sentences)), " ".join(question), candidates[0],
                                   tuple(candidates)))  # fmt: skip
    return examples


def write_cbt(path: Path, examples: list[CBTExample]) -> Path:
    lines = []
    for ex in examples:
        lines += [f"{i} {s}" for i, s in enumerate(ex.sentences, 1)]
        lines += [f"21 {ex.question}\t{ex.answer}\t\t{'|'.join(ex.candidates)}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def plain_scores(model: GPT, tokenizer: Tokenizer, example: CBTExample) -> list[float]:
    """Each filled sentence on its own: one full forward pass, summing the candidate + rest-of-sentence tokens."""
    context, continuations = cbt_texts(example)
    ctx = [tokenizer.eot_id, *tokenizer.encode(context)]
    conts = [tokenizer.encode(c) for c in continuations]
    ctx = ctx[-(model.config.n_ctx - max(map(len, conts)) + 1) :]
    out = []
    for cont in conts:
        seq = ctx + cont
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0].double(), dim=-1)
        out.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    return out


@pytest.mark.parametrize(
    "tokens, text",
    [
        ("`` I do n't know , '' said the king 's son .", "\"I don't know,\" said the king's son."),
        ("He cried : `` Run ! ''", 'He cried: "Run!"'),
        ("` Yes , ' she said .", "'Yes,' she said."),
        ("It was -- well , nothing ( really ) .", "It was -- well, nothing (really)."),
        ("and so on . ''", 'and so on."'),
        ("`` Hush !", '"Hush!'),
    ],
)
def test_cbt_detokenize(tokens: str, text: str):
    assert cbt_detokenize(tokens) == text


def test_cbt_texts_split_at_the_blank():
    ex = CBTExample(tuple(f"Line {i} ." for i in range(1, 21)), "The XXXXX 's hat , '' he said .", "dog",
                    ("dog", "cat", *"abcdefgh"))  # fmt: skip
    context, continuations = cbt_texts(ex)
    assert context.startswith("Line 1. Line 2.") and context.endswith("Line 20. The")
    assert continuations[:2] == [" dog's hat,\" he said.", " cat's hat,\" he said."]
    first = replace(ex, question="XXXXX ran after the XXXXX .")
    context, continuations = cbt_texts(first)
    assert context.endswith("Line 20.") and continuations[0] == " dog ran after the dog."
    quoted = replace(ex, question="He shouted : `` XXXXX ! ''")
    context, continuations = cbt_texts(quoted)
    assert context.endswith('Line 20. He shouted: "') and continuations[1] == 'cat!"'
    with pytest.raises(Gpt2Error, match="blank"):
        cbt_texts(replace(ex, question="no blank here ."))


def test_read_cbt_round_trip(tmp_path: Path, texts: list[str]):
    examples = make_examples(texts, 3)
    assert read_cbt(write_cbt(tmp_path / CBT_TASKS["cbt-cn"], examples)) == examples
    # Windows line ends, extra blank lines and no final newline change nothing
    path = tmp_path / "crlf.txt"
    write_cbt(path, examples)
    path.write_bytes(b"\n\n" + path.read_bytes().replace(b"\n", b"\r\n").rstrip())
    assert read_cbt(path) == examples


def _corrupt(tmp_path: Path, texts: list[str], edit) -> Path:
    path = write_cbt(tmp_path / "bad.txt", make_examples(texts, 2))
    lines = path.read_text(encoding="utf-8").split("\n")
    edit(lines)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (lambda ls: ls.__delitem__(26), 27, "expected a line numbered 5"),  # second example's line 5 missing
        (lambda ls: ls.__setitem__(23, "3 skipped two"), 24, "expected a line numbered 2"),
        (lambda ls: ls.__setitem__(20, ls[20].replace("\t\t", "\t\tzebra|")), 21, "expected 10 non-empty"),
        (lambda ls: ls.__setitem__(20, ls[20].replace("|", "||", 1)), 21, "expected 10 non-empty"),
        (lambda ls: ls.__setitem__(20, re.sub("\t[a-z]+\t", "\tunicorn\t", ls[20])), 21, "not among"),
        (
            lambda ls: ls.__setitem__(20, re.sub(r"\|[^|]+$", "|" + ls[20].split("\t")[-1].split("|")[0], ls[20])),
            21,
            "listed twice",
        ),
        (lambda ls: ls.__setitem__(20, ls[20].replace("XXXXX", "thing")), 21, "no XXXXX"),
        (lambda ls: ls.__setitem__(20, ls[20].split("\t")[0]), 21, "tab-separated"),
        (lambda ls: ls.__setitem__(10, ""), 11, "ends after 10 lines"),
        (lambda ls: ls.__setitem__(10, "eleven"), 11, "expected a line numbered 11"),
        (lambda ls: ls.__delitem__(slice(30, None)), 30, "last example ends after 8 lines"),
    ],
)
def test_read_cbt_malformed_names_file_and_line(tmp_path: Path, texts: list[str], edit, line: int, message: str):
    with pytest.raises(Gpt2Error, match=rf"bad\.txt:{line}: .*{message}"):
        read_cbt(_corrupt(tmp_path, texts, edit))


def test_read_cbt_ends_lines_at_newlines_only(tmp_path: Path, texts: list[str]):
    """U+2028, U+0085 or \\x0c inside a sentence is part of it, not a line end (str.splitlines breaks there)."""
    examples = make_examples(texts, 2)
    first = examples[0]
    examples[0] = replace(first, sentences=(first.sentences[0] + " a\u2028b\x85c\x0cd", *first.sentences[1:]))
    assert read_cbt(write_cbt(tmp_path / "odd.txt", examples)) == examples


def test_a_model_with_nan_weights_scores_nothing(texts: list[str], tokenizer: Tokenizer):
    model = tiny_gpt(tokenizer.vocab_size, 128)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(NotFinite, match=r"not finite \(nan\)"):
        evaluate_cbt(model, tokenizer, make_examples(texts, 1))


def test_read_cbt_empty_or_missing_file(tmp_path: Path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(Gpt2Error, match="no CBT examples"):
        read_cbt(tmp_path / "empty.txt")
    with pytest.raises(Gpt2Error, match="cannot read"):
        read_cbt(tmp_path / "absent.txt")


@pytest.mark.parametrize("n_ctx", [64, 512])
def test_matches_plain_reference(texts: list[str], tokenizer: Tokenizer, n_ctx: int):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=n_ctx, vocab_size=tokenizer.vocab_size)).eval()
    examples = make_examples(texts, 4, seed=n_ctx)
    expected = [plain_scores(model, tokenizer, ex) for ex in examples]
    best = [max(range(10), key=lambda i, s=s: s[i]) for s in expected]
    # the answer is the model's own choice in every other example, another candidate in the rest
    examples = [replace(ex, answer=ex.candidates[b if k % 2 == 0 else (b + 1) % 10])
                for k, (ex, b) in enumerate(zip(examples, best, strict=True))]  # fmt: skip
    result = evaluate_cbt(model, tokenizer, examples, batch_size=4)
    for got, want in zip(result.scores, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert result.predictions == best
    assert (result.examples, result.correct) == (4, 2)
    assert result.accuracy == 0.5 and result.as_dict() == {"acc": 50.0, "correct": 2, "examples": 4}
    longest = max(len(tokenizer.encode(cbt_texts(ex)[0])) for ex in examples)
    assert (longest > n_ctx) == (n_ctx == 64)  # the short model truncates the context, the long one does not


def test_batch_size_does_not_change_results(texts: list[str], tokenizer: Tokenizer):
    torch.manual_seed(1)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=128, vocab_size=tokenizer.vocab_size)).eval()
    examples = make_examples(texts, 3, seed=5)
    results = [evaluate_cbt(model, tokenizer, examples, batch_size=b) for b in (1, 3, 10)]
    for r in results[1:]:
        assert r.predictions == results[0].predictions
        for got, want in zip(r.scores, results[0].scores, strict=True):
            assert got == pytest.approx(want, abs=1e-5)
