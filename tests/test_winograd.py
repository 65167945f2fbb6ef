from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.errors import Gpt2Error
from gpt2cli.eval.winograd import WSC273, WSCSchema, adapt_answer, evaluate_wsc, read_wsc, wsc_texts
from gpt2cli.model import GPT, GPTConfig, NotFinite
from tests.conftest import SAMPLE, shared_data, tiny_gpt

N_CTX = 64

# Schemas in the collection's own layout: irregular whitespace, answer letters with dots and spaces.
SMALL_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<collection>

<schema>
<text>
<txt1>
The trophy doesn't fit into the brown suitcase because
</txt1>
<pron> it  </pron>
<txt2> is too large.
</txt2>
</text>
<quote><pron>it </pron><quote2> is too large</quote2></quote>
<answers>
<answer>The trophy </answer>
<answer>the brown
  suitcase </answer>
</answers>
<correctAnswer>A.  </correctAnswer>
<source> Hector Levesque </source>
</schema>

<schema>
<text><txt1>Bob paid for Charlie's college education.</txt1><pron> He </pron><txt2>is very grateful.</txt2></text>
<answers><answer> Bob </answer><answer> Charlie's</answer></answers>
<correctAnswer> B  </correctAnswer>
</schema>

<schema>
<text><txt1>The older students were bullying the younger ones, so we punished</txt1><pron>them</pron>
<txt2>.</txt2></text>
<answers><answer>The older students</answer><answer>the younger ones</answer></answers>
<correctAnswer> A </correctAnswer>
</schema>

<schema>
<text><txt1>Lily spoke to Donna, breaking</txt1><pron>her</pron><txt2>concentration.</txt2></text>
<answers><answer>Lily</answer><answer>Donna</answer></answers>
<correctAnswer>B.</correctAnswer>
</schema>
</collection>
"""


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    return Tokenizer.from_merges(learn_merges(count_corpus(texts, workers=1), 200))


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    return tiny_gpt(tokenizer.vocab_size, N_CTX)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.xml"
    path.write_text(SMALL_XML, encoding="ascii")
    return path


def sentence(schema: WSCSchema, i: int) -> str:
    context, parts = wsc_texts(schema)
    return context + "".join(parts[i])


def test_read_small_collection(small: Path):
    schemas = read_wsc(small, limit=None)
    assert [s.correct for s in schemas] == [0, 1, 0, 1]
    first = schemas[0]
    assert (first.text1, first.pronoun, first.text2) == (
        "The trophy doesn't fit into the brown suitcase because", "it", "is too large.")  # fmt: skip
    assert first.answers == ("The trophy", "the brown suitcase") and first.line == 4
    assert read_wsc(small, limit=2) == schemas[:2]
    with pytest.raises(Gpt2Error, match="has 4 schemas, fewer than the 273"):
        read_wsc(small)


def test_substitution_adapts_case_and_possessives(small: Path):
    trophy, bob, students, lily = read_wsc(small, limit=None)
    assert sentence(trophy, 0) == "The trophy doesn't fit into the brown suitcase because the trophy is too large."
    assert sentence(bob, 1) == "Bob paid for Charlie's college education. Charlie is very grateful."
    assert (
        sentence(students, 1) == "The older students were bullying the younger ones, so we punished the younger ones."
    )
    assert sentence(lily, 0) == "Lily spoke to Donna, breaking Lily's concentration."
    assert wsc_texts(lily) == ("Lily spoke to Donna, breaking", [(" Lily's", " concentration."),
                                                                  (" Donna's", " concentration.")])  # fmt: skip
    it = WSCSchema("Sam's drawing was hung just above Tina's and", "it", "did look better.", ("x", "Tina's"), 1)
    assert adapt_answer(it, "Tina's") == "Tina's"  # an elliptical noun phrase keeps its 's for "it"
    he = WSCSchema("Joe's uncle can still beat him at tennis, even though", "he", "is younger.", ("him", "x"), 0)
    assert adapt_answer(he, "him") == "he"
    emma = WSCSchema("Emma's mother had died long ago, and", "her", "education had been managed.", ("Emma's",), 0)
    assert [adapt_answer(emma, a) for a in ("Emma's", "Emma's mother")] == ["Emma's", "Emma's mother's"]
    obj = WSCSchema("I met", "her", ".", ("she", "the girl"), 0)  # "her" before punctuation is the object
    assert [adapt_answer(obj, a) for a in obj.answers] == ["her", "the girl"]
    start = WSCSchema("", "They", "left.", ("the guests", "Dr. Adams"), 0)
    assert sentence(start, 0) == "The guests left." and wsc_texts(start)[1][1] == ("Dr. Adams", " left.")


def test_read_real_wsc273():
    path = shared_data("winograd", "WSCollection.xml")
    schemas = read_wsc(path)
    assert len(schemas) == WSC273 == 273
    assert len(read_wsc(path, limit=None)) == 285
    council = schemas[0]  # "... because they feared violence": the councilmen (A)
    assert council.text1 == "The city councilmen refused the demonstrators a permit because"
    assert (council.pronoun, council.text2, council.correct) == ("they", "feared violence.", 0)
    assert council.answers == ("The city councilmen", "the demonstrators")
    assert (schemas[1].text2, schemas[1].correct) == ("advocated violence.", 1)  # the demonstrators (B)
    assert (schemas[3].text2, schemas[3].correct) == ("is too small.", 1)  # the brown suitcase
    assert schemas[272].text1 == "Carol believed that Rebecca regretted that" and schemas[272].correct == 1
    assert sum(s.correct for s in schemas) == 136  # A 137 times, B 136 times
    assert all(len(s.answers) == 2 and s.text2 for s in schemas)
    assert sentence(schemas[232], 1) == "Stretching the girl's back, the woman smiled at the girl."
    assert sentence(schemas[57], 1) == "The drain is clogged with hair. Hair has to be removed."
    assert sentence(schemas[44], 1) == "Susan knows all about Ann's personal problems because Ann is nosy."


def test_real_pieces_tokenize_like_whole_sentences():
    """With GPT-2's own BPE, encoding context, candidate and rest separately gives the whole sentence's tokens."""
    schemas = read_wsc(shared_data("winograd", "WSCollection.xml"))
    folder = shared_data("gpt2-tokenizer")
    gpt2 = Tokenizer.from_files(folder / "encoder.json", folder / "vocab.bpe")
    for schema in schemas:
        context, parts = wsc_texts(schema)
        for cand, rest in parts:
            pieces = gpt2.encode(context) + gpt2.encode(cand) + gpt2.encode(rest)
            assert pieces == gpt2.encode(context + cand + rest)


@pytest.mark.parametrize(
    "old, new, line, message",
    [
        ("<correctAnswer> B  </correctAnswer>", "<correctAnswer> C </correctAnswer>", 26, "not one of the answer"),
        ("<correctAnswer> B  </correctAnswer>", "<correctAnswer></correctAnswer>", 26, "not one of the answer"),
        ("<pron> He </pron>", "<pron> </pron>", 24, "<pron> is empty"),
        ("<pron> He </pron>", "", 24, "<text> has no <pron>"),
        ("<txt2>.</txt2>", "<txt2> </txt2>", 30, "<txt2> is empty"),
        ("<answer> Bob </answer>", "", 23, "has 1 <answer>"),
        ("<answer> Bob </answer>", "<answer> </answer>", 25, "empty <answer>"),
        ("<txt2>.</txt2>", "<txt2>.</txt2><txt2/>", 30, "has 2 <txt2>"),
        ("<correctAnswer>B.</correctAnswer>", "<correctAnswer>B.</correctAnwser>", 39, "not well-formed XML"),
        ("<collection>", "<collection><schema>", 41, "not well-formed XML"),
        ("<collection>", "<collection>&bogus;", 2, "not well-formed XML"),
    ],
)
def test_malformed_xml_names_file_and_line(small: Path, old: str, new: str, line: int, message: str):
    text = SMALL_XML.replace(old, new, 1)
    assert text != SMALL_XML
    small.write_text(text, encoding="ascii")
    with pytest.raises(Gpt2Error, match=rf"small\.xml:{line}: .*{message}"):
        read_wsc(small, limit=None)


def test_not_a_collection(tmp_path: Path):
    (tmp_path / "x.xml").write_text("<schemas><schema/></schemas>", encoding="ascii")
    with pytest.raises(Gpt2Error, match=r"x\.xml:1: .*expected <collection>"):
        read_wsc(tmp_path / "x.xml", limit=None)
    (tmp_path / "y.xml").write_text("<collection></collection>", encoding="ascii")
    with pytest.raises(Gpt2Error, match="no <schema>"):
        read_wsc(tmp_path / "y.xml", limit=None)
    with pytest.raises(Gpt2Error, match="cannot read"):
        read_wsc(tmp_path / "absent.xml")


def plain(model: GPT, tokenizer: Tokenizer, schema: WSCSchema) -> tuple[list[float], list[float]]:
    """Full scores (log P(sentence) - log P(txt1)) and partial scores (log P(txt2 | txt1 + candidate)), each
    candidate on its own, from one full forward pass of the whole sentence encoded in one piece."""
    context, parts = wsc_texts(schema)
    ctx = [tokenizer.eot_id, *tokenizer.encode(context)]
    full, partial = [], []
    for cand, rest in parts:
        seq = [tokenizer.eot_id, *tokenizer.encode(context + cand + rest)]
        assert seq[: len(ctx)] == ctx
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0].double(), dim=-1)
        token = [logp[t - 1, seq[t]].item() for t in range(1, len(seq))]
        n_rest = len(tokenizer.encode(rest))
        full.append(sum(token[len(ctx) - 1 :]))
        partial.append(sum(token[len(token) - n_rest :]))
    return full, partial


def test_matches_plain_reference(model: GPT, tokenizer: Tokenizer, small: Path):
    schemas = read_wsc(small, limit=None)
    extra = [WSCSchema(s.text1, s.pronoun, s.text2, s.answers, 1 - s.correct) for s in schemas]
    schemas = schemas + extra  # every schema with both answers marked correct: exactly half of them are right
    expected = [plain(model, tokenizer, s) for s in schemas]
    result = evaluate_wsc(model, tokenizer, schemas, batch_size=1)
    for got_full, got_partial, (full, partial) in zip(result.scores_full, result.scores_partial, expected,
                                                      strict=True):  # fmt: skip
        assert got_full == pytest.approx(full, abs=1e-4)
        assert got_partial == pytest.approx(partial, abs=1e-4)
    assert result.predictions_full == [int(f[1] > f[0]) for f, _ in expected]
    assert result.predictions_partial == [int(p[1] > p[0]) for _, p in expected]
    assert result.correct_full == result.correct_partial == 4 == result.examples // 2
    assert result.as_dict() == {"acc_full": 50.0, "acc_partial": 50.0, "correct_full": 4, "correct_partial": 4,
                                "examples": 8}  # fmt: skip
    again = evaluate_wsc(model, tokenizer, schemas, batch_size=16)
    assert again.predictions_full == result.predictions_full
    assert again.predictions_partial == result.predictions_partial


def test_a_model_with_nan_weights_scores_nothing(tokenizer: Tokenizer, small: Path):
    """NaN scores would pick answer A every time: the share of schemas whose answer is A, as an accuracy."""
    model = tiny_gpt(tokenizer.vocab_size, N_CTX)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(NotFinite, match=r"not finite \(nan\)"):
        evaluate_wsc(model, tokenizer, read_wsc(small, limit=None))


def test_real_schemas_with_a_truncated_context(tokenizer: Tokenizer):
    """The real collection on a model whose context is too short for some schemas: still the plain scores."""
    schemas = read_wsc(shared_data("winograd", "WSCollection.xml"))
    long = [s for s in schemas if len(tokenizer.encode(s.text1)) > 40][:2] + schemas[:2]
    torch.manual_seed(3)
    short = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=48, vocab_size=tokenizer.vocab_size)).eval()
    result = evaluate_wsc(short, tokenizer, long, batch_size=2)
    for schema, got in zip(long, result.scores_full, strict=True):
        context, parts = wsc_texts(schema)
        conts = [tokenizer.encode(c) + tokenizer.encode(r) for c, r in parts]
        ctx = [tokenizer.eot_id, *tokenizer.encode(context)][-(48 - max(map(len, conts)) + 1) :]
        want = []
        for cont in conts:
            with torch.no_grad():
                logp = F.log_softmax(short(torch.tensor([(ctx + cont)[:-1]]))[0].double(), dim=-1)
            want.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        assert got == pytest.approx(want, abs=1e-4)
