"""Cleaning steps of `gpt2 dedupe`: normalization, per-document filters and the 8-gram Bloom filter."""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.dedupe.bloom import BloomFilter, build_ngram_bloom, ngram_items, optimal_size, overlap_report
from gpt2cli.dedupe.filters import (
    QualityConfig,
    document_reason,
    english_score,
    language_reason,
    language_scores,
    length_reason,
    quality_reason,
    wikipedia_reason,
)
from gpt2cli.dedupe.normalize import normalize_text, text_key
from tests.conftest import SAMPLE


def _articles() -> list[tuple[str, str | None, str]]:
    """(name, URL from the header, normalized text) of every sample article."""
    out = []
    for path in sorted(Path(SAMPLE).glob("*.txt")):
        raw = path.read_text(encoding="utf-8")
        url = next((line[4:].strip() for line in raw.splitlines()[:5] if line.startswith("URL:")), None)
        out.append((path.name, url, normalize_text(raw)))
    assert out, "data/sample/articles is part of the repository"
    return out


ARTICLES = _articles()
PROSE = ARTICLES[0][2]  # a real article, as the clean base of the hand-built bad documents
PROSE_WORDS = PROSE.split()


def sentences(count: int, start: int = 0) -> list[str]:
    """Distinct ~12-word lines of real prose."""
    return [" ".join(PROSE_WORDS[i : i + 12]) for i in range(start * 12, (start + count) * 12, 12)]


# --------------------------------------------------------------------------------------------- normalize


def test_normalize_repairs_mojibake_and_composes() -> None:
    assert normalize_text("cafÃ©") == "café"
    assert normalize_text("The naÃ¯ve cafÃ© owner said â€œhelloâ€\x9d.") == "The naïve café owner said “hello”."
    decomposed = "cafe\u0301 Pok\u00e9mon"
    assert normalize_text(decomposed) == unicodedata.normalize("NFC", decomposed) == "caf\u00e9 Pok\u00e9mon"
    assert normalize_text("“curly” quotes stay") == "“curly” quotes stay"


def test_normalize_whitespace() -> None:
    raw = "  Title \t here \r\n\r\n\r\n\n\nFirst\u00a0 line   \nsecond line\t \n\n\n\nLast paragraph.  \n\n"
    assert normalize_text(raw) == "Title here\n\nFirst line\nsecond line\n\nLast paragraph."
    assert normalize_text(" \n\t \n") == ""
    assert normalize_text(normalize_text(raw)) == normalize_text(raw)


def test_text_key_folds_case_and_layout_only() -> None:
    key = text_key("Hello   World.\n\nSecond paragraph.")
    assert isinstance(key, bytes) and len(key) == 16
    assert key == text_key("hello world. second PARAGRAPH.")
    assert key == text_key("Hello World.\nSecond paragraph.  ")
    assert key != text_key("Hello World. Second paragraph!")


# --------------------------------------------------------------------------------------------- Wikipedia


@pytest.mark.parametrize(
    "url",
    [
        "https://en.wikipedia.org/wiki/Python_(programming_language)",
        "http://en.wikipedia.org/wiki/GPT-2",
        "https://fr.wikipedia.org/wiki/Paris",
        "https://de.m.wikipedia.org/wiki/Berlin",
        "https://en.m.wikipedia.org/wiki/Bloom_filter",
        "HTTPS://EN.WIKIPEDIA.ORG/WIKI/Bloom_filter",
        "https://www.wikipedia.org/",
        "https://Www.Wikipedia.Org:443/wiki/X",
        "http://en.wikipedia.org:80/w/index.php?title=X&oldid=1",
        "https://user@en.wikipedia.org./wiki/X",
        "en.wikipedia.org/wiki/No_scheme",
        "//simple.wikipedia.org/wiki/Protocol_relative",
        "https://zh-yue.wikipedia.org/wiki/X",
        "https://upload.wikimedia.org/wikipedia/commons/a/a9/Example.jpg",
        "https://commons.wikimedia.org/wiki/File:Example.jpg",
        "https://www.wikiwand.com/en/Bloom_filter",
        "https://wikizero.com/en/Paris",
        "https://wiki2.org/en/Paris",
        "https://dbpedia.org/page/Paris",
        "https://infogalactic.com/info/Paris",
        "https://en.everybodywiki.com/Some_page",
        "https://encyclopedia.thefreedictionary.com/Paris",
        "https://wikimili.com/en/Paris",
        "https://web.archive.org/web/20171201000000/https://en.wikipedia.org/wiki/Paris",
        "https://archive.ph/2017.12.01/http://en.wikipedia.org/wiki/Paris",
        "https://en-m-wikipedia-org.translate.goog/wiki/Paris?_x_tr_sl=en",
    ],
)
def test_wikipedia_urls_removed(url: str) -> None:
    assert wikipedia_reason(url, None) == "wikipedia"


@pytest.mark.parametrize("domain", ["en.wikipedia.org", "EN.M.WIKIPEDIA.ORG", "www.wikipedia.org:443", "wikiwand.com."])
def test_wikipedia_domains_removed(domain: str) -> None:
    assert wikipedia_reason(None, domain) == "wikipedia"
    assert wikipedia_reason("https://example.com/redirected", domain) == "wikipedia"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.nytimes.com/2017/11/01/science/wikipedia-editors.html",
        "https://example.com/wikipedia.org",
        "https://wikipedia.org.example.com/wiki/X",
        "https://notwikipedia.org/wiki/X",
        "https://wikipediaorg.com/",
        "https://mywikipedia.org/",
        "https://starwars.fandom.com/wiki/Yoda",
        "http://memory-alpha.wikia.com/wiki/Spock",
        "https://www.wikihow.com/Bake-Bread",
        "https://wikileaks.org/",
        "https://wiki.archlinux.org/title/Systemd",
        "https://www.thefreedictionary.com/bloom",
        "https://en.wiktionary.org/wiki/bloom",
        "https://web.archive.org/web/2017/https://www.bbc.co.uk/news",
        "https://news.example.org/story?source=wikipedia",
        "not a url at all",
        "",
    ],
)
def test_wikipedia_lookalikes_kept(url: str) -> None:
    assert wikipedia_reason(url, None) is None
    assert wikipedia_reason(None, None) is None


# --------------------------------------------------------------------------------------------- length


def test_length() -> None:
    assert length_reason(" ".join(["word"] * 99)) == "length:too_short"
    assert length_reason(" ".join(["word"] * 100)) is None
    assert length_reason(" ".join(["word"] * 100_001)) == "length:too_long"
    assert length_reason("a b c", min_words=3) is None
    assert length_reason("a b c", QualityConfig(min_words=4)) == "length:too_short"
    assert length_reason("a b c d e", max_words=4, min_words=1) == "length:too_long"


# --------------------------------------------------------------------------------------------- language

FRENCH = (
    "La ville a annoncé mardi un nouveau plan pour les pistes cyclables. Selon le maire, les travaux "
    "commenceront au printemps et dureront deux ans. Les habitants du quartier sont partagés : certains "
    "saluent une décision attendue depuis longtemps, d'autres craignent la disparition des places de "
    "stationnement. « Nous voulons que les enfants puissent aller à l'école à vélo en toute sécurité », a "
    "expliqué l'adjointe chargée des transports, qui promet une concertation avec les commerçants."
)
GERMAN = (
    "Die Stadt hat am Dienstag einen neuen Plan für Radwege vorgestellt. Nach Angaben des Bürgermeisters "
    "sollen die Arbeiten im Frühjahr beginnen und zwei Jahre dauern. Die Anwohner sind geteilter Meinung: "
    "Einige begrüßen die lange erwartete Entscheidung, andere fürchten den Verlust von Parkplätzen. Wir "
    "wollen, dass die Kinder sicher mit dem Fahrrad zur Schule fahren können, sagte die Stadträtin, die "
    "auch ein Gespräch mit den Geschäftsleuten versprach."
)
SPANISH = (
    "La ciudad presentó el martes un nuevo plan para los carriles bici. Según el alcalde, las obras "
    "comenzarán en primavera y durarán dos años. Los vecinos del barrio están divididos: algunos celebran "
    "una decisión esperada desde hace tiempo, otros temen la pérdida de plazas de aparcamiento. Queremos que "
    "los niños puedan ir al colegio en bicicleta con seguridad, explicó la concejala de transportes, que "
    "también prometió reuniones con los comerciantes."
)
ENGLISH_WITH_CODE = (
    "To reproduce the bug, run the snippet below with Python 3.11 on a machine with 16 GB of RAM. It loads "
    "about 2,500,000 rows in 40 batches of 62,500 and prints the peak memory after each one.\n\n"
    "import numpy as np\nfor i in range(40):\n    batch = np.load(f'part-{i:03d}.npy')\n"
    "    print(i, batch.nbytes / 2**20, peak())\n\n"
    "On 2017-11-03 the numbers were 412 MB, 415 MB, 419 MB and so on, growing by roughly 3.5 MB per batch. "
    "That is what a leak looks like, and it is the reason we went looking for a cache that was never cleared."
)


@pytest.mark.parametrize(("text", "lang"), [(FRENCH, "fr"), (GERMAN, "de"), (SPANISH, "es")])
def test_non_english_rejected(text: str, lang: str) -> None:
    assert english_score(text) < 0.1
    assert language_reason(text) == f"language:{lang}"
    assert language_scores(text)[lang] > 0.5
    assert language_reason(text, lang) is None


def test_english_kept_with_numbers_and_code() -> None:
    assert english_score(ENGLISH_WITH_CODE) > 0.5
    assert language_reason(ENGLISH_WITH_CODE) is None
    assert language_reason(PROSE) is None
    assert english_score(PROSE) > 0.75


def test_language_edge_cases() -> None:
    assert english_score("") == 0.0
    assert english_score("12 34 56 78 90 11 12") == 0.0
    assert language_reason("東京都は火曜日、新しい自転車道の計画を発表した。" * 10) == "language:unknown"
    mixed = PROSE + "\n\n" + FRENCH  # an English article quoting a French paragraph stays English
    assert language_reason(mixed) is None
    assert language_reason(FRENCH, min_score=0.0) is None
    with pytest.raises(ValueError, match="no function-word profile"):
        language_reason(PROSE, "xx")


# --------------------------------------------------------------------------------------------- quality

LONG_WORDS = ["the", "characteristically", "incomprehensible", "administrative", "responsibilities",
              "notwithstanding", "with"]  # fmt: skip
SHOP_WORDS = ["blue", "cotton", "shirt", "large", "price", "sale", "red", "wool", "jacket", "free", "ship", "size",
              "small", "green", "linen", "dress", "order", "now"]  # fmt: skip
FURNITURE = [
    "We use cookies to improve your experience on our site. Accept all cookies or manage settings.",
    "Please enable JavaScript in your browser to see the comments on this story and reply to them.",
    "Copyright 2017 Example Media Group. All rights reserved. No part may be reproduced or copied.",
    "Read our privacy policy and our terms of use before you sign up for any of our services today.",
    "Sign up for our newsletter to get the best stories of the week delivered to your inbox.",
]
ONLY = QualityConfig(max_top_ngram_share=(), max_dup_ngram_share=())  # n-gram rules off, for isolating them


def _bad_documents() -> dict[str, str]:
    """One document per rule, built from real prose plus the defect, each passing the rules checked before."""
    words = PROSE_WORDS[:400]
    lines = sentences(30)
    long_para = " ".join(PROSE_WORDS[400:520])
    docs = {
        "lorem_ipsum": PROSE + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "hash_ratio": " ".join(f"{w} #tag{i}" if i % 5 == 0 else w for i, w in enumerate(words)),
        "ellipsis_ratio": " ".join(f"{w}..." if i % 6 == 0 else w for i, w in enumerate(words)),
        "alpha_words": " ".join(f"{w} {i * 37 % 1000} {i}.5" if i % 3 == 0 else w for i, w in enumerate(words)),
        "mean_word_length": " ".join(LONG_WORDS * 30),
        "stopwords": "\n".join(" ".join(np.random.default_rng(i).choice(SHOP_WORDS, 12)) for i in range(20)),
        "bullet_lines": "\n".join(f"\u2022 {line}" for line in lines),
        "ellipsis_lines": "\n".join(line + ("..." if i % 2 else ".") for i, line in enumerate(lines)),
        "boilerplate": "\n".join([*sentences(8), *FURNITURE]),
        "dup_paragraphs": "\n\n".join(
            ["\n".join(lines), "Short note one.", "Short note two.", "Short note three."] + ["Short note one."] * 3
        ),
        "dup_paragraph_chars": "\n\n".join([*sentences(10, 30), long_para, long_para]),
        "dup_lines": "\n".join(lines + lines[:13]),
        "dup_line_chars": "\n".join([*sentences(16, 30), long_para, long_para]),
        "top_2gram": "\n".join(
            " ".join(f"{w} cheap flights" for w in PROSE_WORDS[i : i + 6]) for i in range(0, 300, 6)
        ),
        "dup_5gram": " ".join(PROSE_WORDS[:600] + PROSE_WORDS[100:300]),
    }
    return docs


BAD = _bad_documents()


@pytest.mark.parametrize("rule", sorted(BAD))
def test_each_quality_rule_triggers(rule: str) -> None:
    text = BAD[rule]
    assert length_reason(text, min_words=50) is None, "the bad documents must be long enough to judge"
    assert quality_reason(text) == f"quality:{rule}"


@pytest.mark.parametrize("n", [3, 4, 6, 7, 8, 9, 10])
def test_ngram_rules_in_isolation(n: int) -> None:
    """Each n-gram limit on its own, with the others switched off."""
    phrase = " ".join(f"phrase{j}" for j in range(n))
    text = "\n".join(f"{' '.join(PROSE_WORDS[i : i + 4])} {phrase}" for i in range(0, 320, 4))
    if n <= 4:
        config = dataclasses.replace(ONLY, max_top_ngram_share=((n, 0.18),))
        assert quality_reason(text, config) == f"quality:top_{n}gram"
    else:
        config = dataclasses.replace(ONLY, max_dup_ngram_share=((n, 0.5),))
        assert quality_reason(text, config) == f"quality:dup_{n}gram"
    assert quality_reason(text, ONLY) is None


def test_short_word_soup_and_empty() -> None:
    assert quality_reason(" ".join(["a", "to", "of", "and", "be", "x"] * 40)) == "quality:mean_word_length"
    assert quality_reason("") == "quality:empty"
    assert quality_reason(BAD["stopwords"], QualityConfig(min_stopwords=0)) != "quality:stopwords"


@pytest.mark.parametrize(("name", "url", "text"), ARTICLES, ids=[a[0] for a in ARTICLES])
def test_real_articles_pass_every_filter(name: str, url: str | None, text: str) -> None:
    assert wikipedia_reason(url, None) is None
    assert length_reason(text) is None
    assert language_reason(text) is None
    assert quality_reason(text) is None
    assert document_reason(text, url) is None


def test_document_reason_order() -> None:
    assert document_reason(PROSE, "https://en.wikipedia.org/wiki/X") == "wikipedia"
    assert document_reason("too short") == "length:too_short"
    assert document_reason(" ".join([FRENCH] * 3)) == "language:fr"
    assert document_reason(" ".join([FRENCH] * 3), lang=None) == "quality:stopwords"
    assert document_reason(BAD["lorem_ipsum"]) == "quality:lorem_ipsum"


# --------------------------------------------------------------------------------------------- Bloom


def _random_ngrams(count: int, seed: int) -> list[str]:
    words = np.random.default_rng(seed).integers(0, 1 << 40, size=(count, 8))
    return [" ".join(f"w{x}" for x in row) for row in words]


def test_bloom_sizing() -> None:
    m, k = optimal_size(1_000_000, 1e-8)
    assert m == math.ceil(1_000_000 * math.log(1e8) / math.log(2) ** 2) == 38_340_234
    assert k == 27
    bloom = BloomFilter(1_000_000, 1e-8)
    assert (bloom.m, bloom.k, bloom.bits.size) == (m, k, (m + 7) // 8)
    assert optimal_size(1000, 1e-3) == (14378, 10)
    with pytest.raises(ValueError):
        optimal_size(0, 0.1)
    with pytest.raises(ValueError):
        optimal_size(10, 1.0)


def test_bloom_no_false_negatives_and_measured_rate() -> None:
    members, others = _random_ngrams(50_000, 1), _random_ngrams(200_000, 2)
    bloom = BloomFilter(len(members), 1e-3)
    bloom.add_many(iter(members))
    assert bloom.contains_many(members).all()
    assert all(item in bloom for item in members[:100])
    rate = float(bloom.contains_many(others).mean())
    assert 0.5e-3 <= rate <= 2e-3, rate
    assert 0.5e-3 <= bloom.false_positive_rate() <= 2e-3
    assert abs(bloom.approx_len() - len(members)) < 0.02 * len(members)


def test_bloom_save_load(tmp_path: Path) -> None:
    bloom = BloomFilter(1000, 1e-6)
    bloom.add_many(["alpha", b"beta", "gamma delta"])
    path = tmp_path / "train.bloom"  # no .npz suffix: written at exactly this path
    bloom.save(path)
    assert path.exists() and not (tmp_path / "train.bloom.npz").exists()
    loaded = BloomFilter.load(path)
    assert (loaded.m, loaded.k, loaded.capacity, loaded.target_rate) == (bloom.m, bloom.k, 1000, 1e-6)
    assert np.array_equal(loaded.bits, bloom.bits)
    assert "alpha" in loaded and b"beta" in loaded and "gamma delta" in loaded and "epsilon" not in loaded
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) >= {"m", "k", "bits"}


def test_ngram_items_normalization() -> None:
    text = "The  cat's HAT, (on) the-mat: 2 naïve dogs!"
    assert ngram_items(text, n=8) == ["the cat s hat on the mat 2", "cat s hat on the mat 2 naïve",
                                      "s hat on the mat 2 naïve dogs"]  # fmt: skip
    assert ngram_items("only three words", n=8) == []


def test_an_eval_text_is_normalized_as_the_corpus_was() -> None:
    """The corpus holds normalized text (ftfy, NFC): the same words written with decomposed accents, fullwidth
    letters or ligatures in a test set are the same 8-grams (they were 0% found)."""
    words = "the café in the old town serves fine coffee every single morning"
    bloom = build_ngram_bloom([normalize_text(words)], n=8, p=1e-8)
    for variant in (
        words.replace("é", "e\u0301"),
        words.replace("the", "\uff54\uff48\uff45"),
        words.replace("fine", "\ufb01ne"),
    ):
        assert variant != words and overlap_report(bloom, [variant])["percent"] == 100.0


def test_overlap_report_exact_percentage() -> None:
    train = ["The quick brown fox jumps over the lazy dog near the river bank.", "Unrelated words live here only."]
    bloom = build_ngram_bloom(train, n=8, p=1e-8)
    # the test text repeats train[0]'s first 10 words (3 of its 8-grams), differently cased and punctuated,
    # then 10 new words: 20 words make 13 8-grams, of which exactly the first 3 are in the training set
    test = "the QUICK brown fox -- jumps over the lazy dog, near " + " ".join(f"new{i}" for i in range(10))
    report = overlap_report(bloom, [test, "too short"])
    assert report["ngrams"] == 13 and report["found"] == 3
    assert report["percent"] == pytest.approx(100 * 3 / 13)
    assert overlap_report(bloom, train) == {"ngrams": 6, "found": 6, "percent": 100.0}
    assert overlap_report(bloom, []) == {"ngrams": 0, "found": 0, "percent": 0.0}
