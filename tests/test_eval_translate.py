from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.eval.hub import write_wmt14
from gpt2cli.eval.translate import (
    SentencePair,
    corpus_bleu,
    evaluate_wmt14,
    evaluate_wmt14_en_fr,
    evaluate_wmt14_fr_en,
    read_segments,
    read_wmt14,
    translation_prompt,
    translation_shots,
)
from gpt2cli.model import GPT, GPTConfig
from tests.conftest import SAMPLE, greedy_first_line

N_CTX = 128
MAX_NEW = 8

PAIRS = [
    ("The cat is black.", "Le chat est noir."),
    ("I would like a coffee, please.", "Je voudrais un café, s'il vous plaît."),
    ("The council approved the new bike lanes.", "Le conseil a approuvé les nouvelles pistes cyclables."),
    ("It rained all day in Paris.", "Il a plu toute la journée à Paris."),
    ("Prices rose by 3% in June.", "Les prix ont augmenté de 3 % en juin."),
    ("Where is the station?", "Où est la gare ?"),
    ("The match ended in a draw.", "Le match s'est terminé par un match nul."),
    ("She reads a book every week.", "Elle lit un livre chaque semaine."),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]
    return Tokenizer.from_merges(learn_merges(count_corpus([*texts, *(e + f for e, f in PAIRS)], workers=1), 200))


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    """A random model with large weights: unlike a freshly initialized one, it does not just repeat the last
    token, so its answers vary and sometimes end at a newline."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=N_CTX, vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def write_sgm(path: Path, lang: str, segments: list[str], kind: str = "srcset") -> Path:
    """A file in the layout of WMT's newstest2014 .sgm releases."""
    lines = [f'<{kind} setid="newstest2014" srclang="any" trglang="{lang}">',
             '<doc sysid="ref" docid="1012-bbc" genre="news" origlang="en">', "<p>"]  # fmt: skip
    lines += [f'<seg id="{i}">{s}</seg>' for i, s in enumerate(segments, 1)]
    lines += ["</p>", "</doc>", f"</{kind}>"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_wmt14_sgm_and_plain(tmp_path: Path):
    en = write_sgm(tmp_path / "newstest2014-fren-src.en.sgm", "en", [e for e, _ in PAIRS])
    fr = write_sgm(tmp_path / "newstest2014-fren-ref.fr.sgm", "fr", [f for _, f in PAIRS], "refset")
    expected = [SentencePair(e, f) for e, f in PAIRS]
    assert read_wmt14(en, fr) == expected
    (tmp_path / "newstest2014.en").write_text("".join(e + "\n" for e, _ in PAIRS), encoding="utf-8")
    (tmp_path / "newstest2014.fr").write_text("".join(f + "\n" for _, f in PAIRS), encoding="utf-8")
    assert read_wmt14(tmp_path / "newstest2014.en", tmp_path / "newstest2014.fr") == expected
    write_sgm(tmp_path / "x.sgm", "en", ["  A &amp; B  "])
    assert read_segments(tmp_path / "x.sgm") == ["A &amp; B"]  # as sacrebleu extracts it: stripped, not unescaped


def test_read_wmt14_errors(tmp_path: Path):
    en = write_sgm(tmp_path / "a.en.sgm", "en", ["One.", "Two."])
    fr = write_sgm(tmp_path / "b.fr.sgm", "fr", ["Un."])
    with pytest.raises(Gpt2Error, match=r"a\.en\.sgm has 2 segments but .*b\.fr\.sgm has 1"):
        read_wmt14(en, fr)
    (tmp_path / "plain.fr").write_text("Un.\n\nDeux.\n")
    with pytest.raises(Gpt2Error, match=r"plain\.fr:2: empty segment"):
        read_segments(tmp_path / "plain.fr")
    (tmp_path / "broken.sgm").write_text('<doc>\n<seg id="1">One.</seg>\n<seg id="2">Two.\n</doc>\n')
    with pytest.raises(Gpt2Error, match=r"broken\.sgm:3: a <seg> line without"):
        read_segments(tmp_path / "broken.sgm")
    (tmp_path / "plain.sgm").write_text("Not sgm.\n")
    with pytest.raises(Gpt2Error, match=r"plain\.sgm: no <seg> lines"):
        read_segments(tmp_path / "plain.sgm")


def test_plain_segments_end_at_newlines_only(tmp_path: Path):
    """A segment may hold U+2028, U+0085 or \\x0c (str.splitlines would cut it in two and misalign the sides); the
    hub's rows, written as files, read back as they were, a newline inside a segment made a space."""
    (tmp_path / "a.en").write_text("One\u2028two.\r\nThree\x0cfour.\n", encoding="utf-8")
    assert read_segments(tmp_path / "a.en") == ["One\u2028two.", "Three\x0cfour."]
    rows = [{"translation": {"en": "One\u2028two.", "fr": "Un\x85deux."}},
            {"translation": {"en": "Three four.", "fr": "Trois\nquatre."}}]  # fmt: skip
    write_wmt14(rows, tmp_path / "newstest2014.en")
    assert read_wmt14(tmp_path / "newstest2014.en", tmp_path / "newstest2014.fr") == [
        SentencePair("One\u2028two.", "Un\x85deux."),
        SentencePair("Three four.", "Trois quatre."),
    ]


def test_prompt_format_and_fixed_examples():
    pairs = [SentencePair(e, f) for e, f in PAIRS]
    candidates = translation_shots(pairs, 2, seed=0)
    assert candidates == translation_shots(pairs, 2, seed=0) and len(set(candidates)) == 3
    outside = next(p for p in pairs if p not in candidates)
    a, b = candidates[0], candidates[1]
    assert translation_prompt(outside, candidates, 2, "en-fr") == f"{a.en} = {a.fr}\n{b.en} = {b.fr}\n{outside.en} ="
    assert translation_prompt(outside, candidates, 2, "fr-en") == f"{a.fr} = {a.en}\n{b.fr} = {b.en}\n{outside.fr} ="
    inside = candidates[0]
    c = candidates[2]
    assert translation_prompt(inside, candidates, 2, "en-fr") == f"{b.en} = {b.fr}\n{c.en} = {c.fr}\n{inside.en} ="


@pytest.mark.parametrize("direction", ["en-fr", "fr-en"])
def test_repeated_segments_never_shorten_the_examples(direction: str):
    """Two pairs with the same source are both left out of that source's prompt: the selection holds different
    sources, so every prompt still has exactly ``shots`` example pairs."""
    pairs = [SentencePair(e, f) for e, f in PAIRS]
    source = direction.split("-")[0]
    repeats = [SentencePair(p.en, p.fr + " (bis)") if source == "en" else SentencePair(p.en + " (bis)", p.fr)
               for p in pairs]  # fmt: skip
    pool = pairs + repeats
    for seed in range(20):
        candidates = translation_shots(pool, 3, seed, source)
        assert len({c.side(source) for c in candidates}) == 4
        for item in pool:
            assert translation_prompt(item, candidates, 3, direction).count(" = ") == 3, (seed, item)


def test_corpus_bleu():
    assert corpus_bleu(["Le chat est noir."], ["Le chat est noir."])[0] == pytest.approx(100)
    score, signature = corpus_bleu(["Le chien est noir.", "Bonjour"], ["Le chat est noir.", "Au revoir"])
    assert 0 < score < 100 and "tok:13a" in signature
    import sacrebleu

    expected = sacrebleu.corpus_bleu(["Le chien est noir.", "Bonjour"], [["Le chat est noir.", "Au revoir"]]).score
    assert score == pytest.approx(expected)


def plain_translation(model: GPT, tokenizer: Tokenizer, prompt: str) -> str:
    return greedy_first_line(model, tokenizer, prompt, N_CTX, MAX_NEW)[0]


@pytest.mark.parametrize("direction", ["en-fr", "fr-en"])
def test_evaluate_wmt14_matches_plain_loop(model: GPT, tokenizer: Tokenizer, direction: str):
    pairs = [SentencePair(e, f) for e, f in PAIRS]
    candidates = translation_shots(pairs, 3, seed=0)
    source, target = direction.split("-")

    def prompt(item: SentencePair) -> str:  # written out independently of the module
        shown = [c for c in candidates if c != item][:3]
        return "".join(f"{c.side(source)} = {c.side(target)}\n" for c in shown) + item.side(source) + " ="

    plain = [plain_translation(model, tokenizer, prompt(p)) for p in pairs]
    evaluate = evaluate_wmt14_en_fr if direction == "en-fr" else evaluate_wmt14_fr_en
    result = evaluate(model, tokenizer, pairs, batch_size=3, shots=3, max_new_tokens=MAX_NEW)
    assert list(result.translations) == plain
    import sacrebleu

    assert result.bleu == pytest.approx(sacrebleu.corpus_bleu(plain, [[p.side(target) for p in pairs]]).score)
    assert any(len(g) > 1 for g in plain) and len(set(plain)) > 1  # the random model says various things
    report = result.as_dict()
    assert report["task"] == f"wmt14-{direction}" and report["examples"] == len(pairs) and report["shots"] == 3
    assert report["new_tokens"] == MAX_NEW
    assert report["samples"][0] == {"source": pairs[0].side(source), "translation": plain[0],
                                    "reference": pairs[0].side(target)}  # fmt: skip
    json.dumps(report)
    part = evaluate(model, tokenizer, pairs[:3], pool=pairs, batch_size=2, shots=3, max_new_tokens=MAX_NEW)
    assert list(part.translations) == plain[:3]


def test_unknown_direction(model: GPT, tokenizer: Tokenizer):
    with pytest.raises(UsageError, match="direction"):
        evaluate_wmt14(model, tokenizer, [SentencePair("a", "b")], direction="en-de")
