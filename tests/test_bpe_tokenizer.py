from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gpt2cli.bpe import EOT, GPT2_PATTERN, Tokenizer
from gpt2cli.bpe.tokenizer import (
    _PARALLEL_CHARS,
    _contiguous_groups,
    bpe_merge,
    bytes_to_unicode,
    split_at_piece_boundaries,
)
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.errors import Gpt2Error
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    folder = shared_data("gpt2-tokenizer")
    return folder / "encoder.json", folder / "vocab.bpe"


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, built offline from the same original files."""
    encoder_json, vocab_bpe = gpt2_files
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def real_texts() -> dict[str, str]:
    lambada = shared_data("lambada", "lambada_test.jsonl")
    return {
        "wikitext2": shared_data("wikitext-2", "wiki.test.tokens").read_text(encoding="utf-8"),
        "ptb": shared_data("ptb", "ptb.test.txt").read_text(encoding="utf-8"),
        "lambada": "\n\n".join(json.loads(line)["text"] for line in lambada.read_text(encoding="utf-8").splitlines()),
    }


# Text that stresses the pre-tokenizer: emoji (with modifiers and ZWJ), CJK, combining marks, every kind of
# whitespace, digits, contractions, control characters, and the special token's string itself.
PIECES = [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\x0b", "\x0c",
    "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "\u200b", "hello", " world", "Hello", "123", " 4567", "٣", "Ⅻ",
    "😀", "👍🏽", "👩‍👩‍👧", "中文", "字", "한국어", "e\u0301", "\u0301", "a\u0300\u0316", "ﬁ", "\x00", "\x07",
    "\x1b[0m", "!!", " ?", "...", "—", "<|endoftext|>", "<|", "|>", "ÿ", "\ufeff", "\U0010ffff",
    "\U0001d518\U0001d52b\U0001d526",
]  # fmt: skip
# Characters that Python's Unicode tables (14.0 in 3.11) assign. The pattern's letter and number classes follow
# each regex engine's own Unicode version, so a character assigned later is a letter to one engine and not to
# another: U+323B0 is a letter to the `regex` module of 2026 (Unicode 17), not to tiktoken's engine or ours.
assigned = st.characters(codec="utf-8", exclude_categories=["Cn"])
unicode_text = st.one_of(
    st.text(assigned, max_size=120),
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(assigned, max_size=5)), max_size=30).map("".join),
)


def test_hello_world(gpt2: Tokenizer):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_byte_to_unicode_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert sum(1 for b, c in table.items() if ord(c) >= 256) == 68


@pytest.mark.parametrize("name", ["wikitext2", "ptb", "lambada"])
def test_ids_equal_tiktoken_on_real_text(name, gpt2: Tokenizer, tiktoken_gpt2):
    text = real_texts()[name]
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text) == expected
    assert gpt2.encode_reference(text) == expected  # the project's own algorithm, not only the engine
    docs = text.split("\n\n")
    assert gpt2.encode_batch(docs) == tiktoken_gpt2.encode_ordinary_batch(docs)
    assert gpt2.decode(expected) == text


def test_characters_unicode_assigned_lately_encode_as_tiktoken_does(gpt2: Tokenizer, tiktoken_gpt2):
    text = "\U000323b0's \U0001fae9 x\U00031350y"  # unassigned in Unicode 14, assigned since
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_random_unicode_matches_tiktoken_and_round_trips(text, gpt2: Tokenizer, tiktoken_gpt2):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert ids == gpt2.encode_reference(text)
    assert gpt2.decode(ids) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(unicode_text, max_size=8).map("".join), parts=st.integers(2, 9))
def test_cutting_at_piece_boundaries_keeps_the_ids(text, parts, gpt2: Tokenizer):
    pieces = split_at_piece_boundaries(text, parts)
    assert "".join(pieces) == text and len(pieces) <= parts and all(pieces)
    assert [i for piece in pieces for i in gpt2.encode_reference(piece)] == gpt2.encode_reference(text)


@given(sizes=st.lists(st.integers(0, 50), max_size=40), groups=st.integers(1, 9))
def test_contiguous_groups_cover_every_document_once_in_order(sizes, groups):
    runs = _contiguous_groups(sizes, groups)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    assert len(runs) <= groups


def test_long_text_on_threads_equals_tiktoken(gpt2: Tokenizer, tiktoken_gpt2):
    # Long enough to be cut and encoded on several threads, with every kind of piece at the cuts.
    rng = random.Random(0)
    text = "".join(rng.choice(PIECES) for _ in range(250_000))
    assert len(text) > 4 * _PARALLEL_CHARS
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text) == expected
    assert gpt2._encode_ordinary(text, num_threads=3) == expected
    docs = [text[i : i + 5000] for i in range(0, len(text), 5000)]
    assert gpt2.encode_batch(docs, num_threads=3) == tiktoken_gpt2.encode_ordinary_batch(docs)
    assert gpt2.encode_batch(docs, num_threads=1) == tiktoken_gpt2.encode_ordinary_batch(docs)


def test_special_token_is_ordinary_text_unless_allowed(gpt2: Tokenizer, tiktoken_gpt2):
    text = "end of page<|endoftext|>next page"
    plain = gpt2.encode(text)
    assert 50256 not in plain and plain == tiktoken_gpt2.encode_ordinary(text)
    special = gpt2.encode(text, allowed_special="all")
    assert special.count(50256) == 1 and special == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={EOT}) == special
    assert gpt2.decode(special) == text
    with pytest.raises(Gpt2Error, match="unknown special"):
        gpt2.encode(text, allowed_special={"<|pad|>"})


@pytest.mark.parametrize(
    "text", ["a" * 1_000_000, "^" * 1_000_000, " " * 1_000_000, " " * 1_000_000 + "x", "\n \t" * 300_000 + "ab"]
)
def test_long_runs_encode_in_seconds(text: str, gpt2: Tokenizer):
    started = time.perf_counter()
    ids = gpt2.encode(text)
    assert time.perf_counter() - started < 10
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("text", ["a" * 20_000, "^" * 20_000, " " * 20_000 + "x", "x" + "\n" * 9000 + " y"])
def test_long_runs_match_the_reference(text: str, gpt2: Tokenizer):
    assert gpt2.encode(text) == gpt2.encode_reference(text)


def test_reference_merge_is_fast_on_one_long_piece(gpt2: Tokenizer):
    started = time.perf_counter()
    tokens = bpe_merge(b"a" * 200_000, gpt2.merge_ranks)
    assert time.perf_counter() - started < 10
    assert b"".join(tokens) == b"a" * 200_000


def test_lone_surrogates_become_replacement_characters(gpt2: Tokenizer, tiktoken_gpt2):
    text = "ok \ud800 fine"
    assert gpt2.encode(text) == gpt2.encode_reference(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == "ok \ufffd fine"


def test_decode_replaces_invalid_utf8(gpt2: Tokenizer):
    half_of_e_acute = gpt2.vocab[b"\xc3"]  # the first byte of "é" alone is not UTF-8
    assert gpt2.decode([half_of_e_acute]) == "\ufffd"
    assert gpt2.decode_bytes([half_of_e_acute]) == b"\xc3"
    with pytest.raises(UnicodeDecodeError):
        gpt2.decode([half_of_e_acute], errors="strict")
    with pytest.raises(Gpt2Error, match="outside the vocabulary"):
        gpt2.decode([50257])


def test_save_round_trip_and_hugging_face_tokenizer_json(gpt2: Tokenizer, tmp_path: Path, gpt2_files):
    from tokenizers import Tokenizer as HFTokenizer

    gpt2.save(tmp_path)
    again = Tokenizer.from_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert again.vocab == gpt2.vocab and again.merges == gpt2.merges and again.special_tokens == gpt2.special_tokens
    assert (tmp_path / "vocab.bpe").read_bytes() == gpt2_files[1].read_bytes()
    assert json.loads((tmp_path / "encoder.json").read_text()) == json.loads(gpt2_files[0].read_text())
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = real_texts()["wikitext2"][:200_000]
    assert hf.encode(text).ids == gpt2.encode(text)
    for sample in PIECES:
        assert hf.encode(sample).ids == gpt2.encode(sample, allowed_special="all"), repr(sample)


def test_learned_tokens_shaped_like_special_ones_load_back_as_text(tmp_path: Path):
    """`<|>` and `<||>` (Haskell's operators) are merges a corpus of code teaches; only <|endoftext|> is special."""
    learned = Tokenizer.from_merges(learn_merges(count_corpus(["a<|>b c<||>d"] * 50, 1), 8))
    assert {b"<|>", b"<||>"} <= set(learned.vocab)
    learned.save(tmp_path)
    text = "a<|>b c<||>d<|endoftext|>"
    for name in ("", "encoder.json"):  # GPT-2's files, then tokenizer.json alone
        if name:
            (tmp_path / name).unlink()
            (tmp_path / "vocab.bpe").unlink()
        loaded = Tokenizer.load(tmp_path)
        assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (
            learned.vocab,
            learned.merges,
            learned.special_tokens,
        )
        assert loaded.encode(text, allowed_special="all") == learned.encode(text, allowed_special="all")


def test_load_from_directory(gpt2: Tokenizer, tmp_path: Path):
    gpt2.save(tmp_path)
    assert Tokenizer.load(tmp_path).encode("Hello world") == [15496, 995]


def test_load_from_a_tokenizer_json_alone(gpt2: Tokenizer, tmp_path: Path):
    """What recent transformers save: tokenizer.json only, its merges as strings or (newer) as pairs."""
    gpt2.save(tmp_path)
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / name).unlink()
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (gpt2.vocab, gpt2.merges, gpt2.special_tokens)
    raw = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    raw["model"]["merges"] = [m.split(" ") for m in raw["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw), encoding="utf-8")
    assert Tokenizer.load(tmp_path).encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, 50256]
    raw["model"] = {"type": "WordPiece", "vocab": {}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(Gpt2Error, match=r"tokenizer.json: its model is 'WordPiece', not a byte-level BPE"):
        Tokenizer.load(tmp_path)


def test_mismatched_vocab_bpe_is_a_clear_error(tmp_path: Path, gpt2_files):
    encoder = json.loads(gpt2_files[0].read_text())
    order = [t for t in sorted(encoder, key=encoder.get) if t != "Ġthe"]
    (tmp_path / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(order)}))
    with pytest.raises(Gpt2Error, match=r"vocab.bpe does not match .*encoder.json: merge \d+ \(Ġt he\) uses unknown"):
        Tokenizer.from_files(tmp_path / "encoder.json", gpt2_files[1])
    (tmp_path / "gap.json").write_text(json.dumps({**encoder, "<|endoftext|>": 60000}))
    with pytest.raises(Gpt2Error, match=r"token ids are not 0\.\.50256 without gaps"):
        Tokenizer.from_files(tmp_path / "gap.json", gpt2_files[1])
    (tmp_path / "bad.bpe").write_text("#version: 0.2\nĠ t x\n")
    with pytest.raises(Gpt2Error, match=r"bad.bpe:2: a merge is two tokens"):
        Tokenizer.from_files(gpt2_files[0], tmp_path / "bad.bpe")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(Gpt2Error, match=r"cannot read .*broken\.json"):
        Tokenizer.from_files(tmp_path / "broken.json", gpt2_files[1])


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    text = shared_data("wikitext-2", "wiki.valid.tokens").read_text(encoding="utf-8")
    merges = learn_merges(count_corpus(text.split("\n \n"), workers=1), 3000)
    return Tokenizer.from_merges(merges)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_trained_vocabulary_engine_equals_reference(text, trained: Tokenizer):
    assert trained.engine_compatible
    ids = trained.encode(text)
    assert ids == trained.encode_reference(text)
    assert trained.decode(ids) == text


def test_trained_vocabulary_on_real_text_and_hf(trained: Tokenizer, tmp_path: Path):
    from tokenizers import Tokenizer as HFTokenizer

    text = real_texts()["ptb"]
    ids = trained.encode(text)
    assert ids == trained.encode_reference(text)
    trained.save(tmp_path)
    assert HFTokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids == ids
    assert trained.vocab_size == 3257 and trained.eot_id == 3256


def test_long_whitespace_detection_is_exact():
    from gpt2cli.bpe.tokenizer import _has_long_whitespace

    for n in (4095, 4096, 9000):
        for offset in range(0, 4200, 131):
            for ch in (" ", "\n", "\t", "\u3000"):
                assert _has_long_whitespace("x" * offset + ch * n + "y") == (n >= 4096), (n, offset, ch)
    assert not _has_long_whitespace("a \n" * 10_000 + "a" + " " * 4095)
    assert _has_long_whitespace(" \n" * 10_000 + "a")
