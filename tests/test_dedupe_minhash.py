"""MinHash + LSH near-duplicate detection on planted near-duplicates of real text (WikiText-2 paragraphs when
../shared/data has them, else the embedded sample articles), at measured 5-gram Jaccard similarities."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.dedupe.minhash import (
    DEFAULT_THRESHOLD,
    EMPTY,
    LSHIndex,
    MinHasher,
    UnionFind,
    band_hashes,
    candidate_probability,
    choose_keepers,
    estimated_jaccard,
    jaccard,
    lsh_params,
    near_duplicate_clusters,
    shingle_batch,
    shingles,
)
from tests.conftest import SAMPLE, SHARED_DATA

TARGETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def real_paragraphs(min_words: int = 40) -> list[str]:
    """WikiText-2 test paragraphs when present (they are plentiful), else paragraphs of the sample articles."""
    wiki = SHARED_DATA / "wikitext-2" / "wiki.test.tokens"
    if wiki.exists():
        lines = wiki.read_text(encoding="utf-8").splitlines()
    else:
        lines = [p for f in sorted(SAMPLE.glob("*.txt")) for p in f.read_text(encoding="utf-8").split("\n\n")]
    out = [" ".join(p.split()) for p in lines if not p.strip().startswith("=")]
    return [p for p in out if len(p.split()) >= min_words]


def variant(words: list[str], target: float, vocab: list[str], rng: random.Random) -> list[str]:
    """``words`` with random replacements, deletions and insertions, as many as bring the 5-gram Jaccard to
    the original down to ``target`` (bisected; the exact value is measured afterwards)."""
    base = shingles(" ".join(words))
    plan = [(rng.choice("rdi"), rng.random(), rng.choice(vocab)) for _ in range(len(words))]

    def apply(k: int) -> list[str]:
        out = list(words)
        for op, where, word in plan[:k]:
            i = min(int(where * len(out)), len(out) - 1)
            if op == "r":
                out[i] = word
            elif op == "d" and len(out) > 1:
                del out[i]
            else:
                out.insert(i, word)
        return out

    lo, hi = 1, len(plan)
    while lo < hi:
        mid = (lo + hi) // 2
        if jaccard(base, shingles(" ".join(apply(mid)))) <= target:
            hi = mid
        else:
            lo = mid + 1
    return apply(lo)


@pytest.fixture(scope="module")
def planted() -> tuple[list[np.ndarray], dict[tuple[int, int], float]]:
    """Shingle sets of ~400 documents: base paragraphs, and for a third of them 3 variants at target Jaccard
    similarities; the exact Jaccard of every pair inside a family."""
    rng = random.Random(7)
    paras = real_paragraphs()
    rng.shuffle(paras)
    paras = paras[:200]
    vocab = [w for p in paras for w in p.split()]
    texts, families = list(paras), []
    for f in range(0, len(paras), 3):
        family = [f]
        for t in rng.sample(TARGETS, 3):
            family.append(len(texts))
            texts.append(" ".join(variant(paras[f].split(), t, vocab, rng)))
        families.append(family)
    values, offsets = shingle_batch(texts)
    sets = [values[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    truth = {(i, j): jaccard(sets[i], sets[j]) for fam in families for a, i in enumerate(fam) for j in fam[a + 1 :]}
    return sets, truth


def test_shingles_normalize_words_and_handle_short_and_empty_texts() -> None:
    text = "The quick brown fox jumps over the lazy dog, and the quick brown fox sleeps."
    s = shingles(text)
    assert s.dtype == np.uint64 and np.all(np.diff(s.astype(np.float64)) >= 0)
    assert len(s) == len(np.unique(s)) == 11  # 15 words: 11 distinct 5-grams
    assert np.array_equal(shingles("THE quick -- brown fox, jumps!"), shingles("the quick brown fox jumps"))
    assert len(shingles("only three words")) == 1
    assert not np.array_equal(shingles("only three words"), shingles("only three"))
    assert len(shingles("")) == 0 and len(shingles("  --  !")) == 0
    assert len(shingles("a b c d e f", n=2)) == 5
    values, offsets = shingle_batch([text, "", "only three words", text])
    assert offsets.tolist() == [0, 11, 11, 12, 23]
    assert np.array_equal(values[12:], s)


MASK64 = (1 << 64) - 1


def fmix(h: int) -> int:
    """MurmurHash3's fmix64 in plain Python integers."""
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def _reference_shingle(words: list[str]) -> int:
    """The documented definition in plain Python integers."""
    mask = MASK64

    acc = 0
    for i, w in enumerate(words):
        poly = sum(ord(c) * pow(0x9E3779B97F4A7C15, j, 1 << 64) for j, c in enumerate(w)) & mask
        wh = fmix((poly + len(w) * 0x27D4EB2F165667C5) & mask)
        acc = (acc + wh * pow(0xC2B2AE3D27D4EB4F, i, 1 << 64)) & mask
    return fmix((acc + len(words)) & mask)


def test_shingle_hashes_are_pinned() -> None:
    """Saved signatures and indexes are compared across runs and machines: the hash must never drift (bump
    HASH_VERSION when it has to)."""
    assert shingles("Héllo wörld of near duplicates today").tolist() == [7688629546351975166, 14721874420413291178]


def test_shingles_match_the_documented_definition() -> None:
    words = ["héllo", "wörld", "of", "near", "duplicates", "today"]
    expected = sorted({_reference_shingle(words[i : i + 5]) for i in range(len(words) - 4)})
    assert shingles(" ".join(words)).tolist() == expected
    assert shingles("Short text").tolist() == [_reference_shingle(["short", "text"])]


# MinHasher(4)'s signature of shingles("Héllo wörld of near duplicates today"), pinned like the shingle hashes
PINNED_SIGNATURE = [492219932, 375518119, 258816306, 142114493]


@pytest.mark.parametrize("num_perm", [1, 7, 100, 128, 256])
def test_signatures_are_the_minima_of_the_documented_permutations(num_perm: int) -> None:
    rng = np.random.default_rng(num_perm)
    docs = [rng.integers(0, 2**63, size, dtype=np.uint64) for size in (1, 5, 300, 5000, 0, 17)]
    hasher = MinHasher(num_perm, seed=3)
    sigs = hasher.signatures(docs)
    assert sigs.shape == (len(docs), num_perm) and sigs.dtype == np.uint32
    for doc, sig in zip(docs, sigs, strict=True):
        if len(doc) == 0:
            assert np.all(sig == EMPTY)
            continue
        assert np.array_equal(sig, hasher.hash_values(doc).min(axis=0))


def test_permutation_values_follow_the_documented_formula() -> None:
    """h_k(x) = (u + k v) mod 2**32 with u, v the low and high halves of fmix64(x ^ key), v odd: plain ints."""
    mask = MASK64

    hasher = MinHasher(5, seed=9)
    xs = [0, 1, 2**63 + 12345, mask]
    for x, row in zip(xs, hasher.hash_values(np.array(xs, np.uint64)).tolist(), strict=True):
        mixed = fmix(x ^ int(hasher.key))
        u, v = mixed & 0xFFFFFFFF, (mixed >> 32) | 1
        assert row == [(u + k * v) % 2**32 for k in range(5)]
    assert int(MinHasher(5, seed=9).key) == int(hasher.key) != int(MinHasher(5, seed=10).key)
    # pinned: saved signatures are compared across runs and machines (bump HASH_VERSION if this has to change)
    assert MinHasher(4).signature(shingles("Héllo wörld of near duplicates today")).tolist() == PINNED_SIGNATURE


def test_estimate_spread_is_binomial_at_known_jaccard() -> None:
    """Random sets with exact J: the estimate is unbiased and spreads like independent permutations."""
    rng = np.random.default_rng(5)
    hasher = MinHasher(128)
    for j in (0.3, 0.5, 0.8):
        n = 200
        common = round(2 * n * j / (1 + j))
        exact = common / (2 * n - common)
        estimates = []
        for _ in range(400):
            u = rng.integers(0, 2**63, 2 * n - common, dtype=np.uint64)
            a, b = hasher.signatures([u[:n], np.concatenate([u[:common], u[n:]])])
            estimates.append(estimated_jaccard(a, b))
        sd = np.sqrt(exact * (1 - exact) / 128)
        assert abs(np.mean(estimates) - exact) < 3 * sd / np.sqrt(400)
        assert 0.85 * sd < np.std(estimates) < 1.15 * sd


def test_identical_sets_have_identical_signatures_across_instances() -> None:
    s = shingles(real_paragraphs()[0])
    shuffled = np.random.default_rng(0).permutation(np.concatenate([s, s[:10]]))
    a, b = MinHasher(128).signature(s), MinHasher(128).signature(shuffled)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, MinHasher(128, seed=2).signature(s))


def test_estimated_jaccard_is_close_to_the_true_one(planted) -> None:
    sets, truth = planted
    sigs = MinHasher(128).signatures(sets)
    errors = np.array([estimated_jaccard(sigs[i], sigs[j]) - t for (i, j), t in truth.items()])
    sd = np.array([np.sqrt(t * (1 - t) / 128) for t in truth.values()])
    assert abs(errors.mean()) < 0.01  # unbiased
    assert np.sqrt(np.mean(errors**2)) < 1.3 * np.sqrt(np.mean(sd**2))  # binomial spread: permutations independent
    assert np.all(np.abs(errors) < 5 * sd + 0.02)


def test_lsh_params_find_pairs_at_the_threshold_with_the_fewest_candidates_below() -> None:
    assert lsh_params(0.5, 128) == (35, 3)  # 99.1% of the pairs at J = 0.5; the even weighting's 25 x 5: 55%
    for t in TARGETS:
        b, r = lsh_params(t, 128)
        assert b * r <= 128
        assert candidate_probability(t, b, r) >= 0.99
        assert candidate_probability(t, b - 1, r) < 0.99  # no band more than the recall needs
        # a split with fewer rows would need more bands and propose more pairs below the threshold
        if r > 1:
            fewer = next(k for k in range(1, 1000) if candidate_probability(t, k, r - 1) >= 0.99)
            below = np.linspace(0, t, 101)
            assert candidate_probability(below, fewer, r - 1).mean() > candidate_probability(below, b, r).mean()
    rows = [lsh_params(t, 128)[1] for t in TARGETS]
    assert rows == sorted(rows)
    # a lower recall buys fewer candidates; too few permutations for it: the split that comes closest
    assert lsh_params(0.5, 128, recall=0.5) == (22, 5)
    assert lsh_params(0.5, 4) == (4, 1)
    with pytest.raises(ValueError, match="recall"):
        lsh_params(0.5, 128, recall=1.0)


def test_planted_near_duplicates_precision_and_recall(planted) -> None:
    sets, truth = planted
    clusters = near_duplicate_clusters(sets, DEFAULT_THRESHOLD)
    group = {i: k for k, c in enumerate(clusters) for i in c}
    together = {p for p in truth if p[0] in group and group[p[0]] == group.get(p[1])}
    # every verified edge is a real duplicate: clusters only join documents through pairs with J >= threshold
    for c in clusters:
        assert c == sorted(c) and len(c) >= 2
        assert all(max(jaccard(sets[i], sets[j]) for j in c if j != i) >= DEFAULT_THRESHOLD for i in c)
    high = [p for p, j in truth.items() if j >= 0.8]
    near = [p for p, j in truth.items() if DEFAULT_THRESHOLD <= j < 0.8]
    low = [p for p, j in truth.items() if j < 0.3]
    assert len(high) > 30 and len(near) > 30
    assert sum(p in together for p in high) / len(high) >= 0.95
    assert sum(p in together for p in near) / len(near) >= 0.97  # S-curve of (35, 3): 0.99 at J=0.5
    # pairs below the threshold are only together through a chain of verified edges
    assert sum(p in together for p in low) / max(len(low), 1) <= 0.2


def test_candidates_are_verified_so_there_are_no_false_positives(planted) -> None:
    sets, _ = planted
    sigs = MinHasher(128).signatures(sets)
    index = LSHIndex(*lsh_params(0.5, 128))
    index.add(range(len(sets)), sigs)
    pairs = list(index.candidate_pairs())
    assert pairs == sorted(set(pairs)) and all(i < j for i, j in pairs)
    verified = [(i, j) for i, j in pairs if jaccard(sets[i], sets[j]) >= 0.5]
    assert 0 < len(verified) <= len(pairs)
    assert all(jaccard(sets[i], sets[j]) >= 0.5 for i, j in verified)  # precision 1.0 by construction


def test_incremental_index_equals_index_of_the_union(planted, tmp_path: Path) -> None:
    sets, _ = planted
    sigs = MinHasher(128).signatures(sets)
    bands, rows = lsh_params(0.5, 128)
    whole = LSHIndex(bands, rows)
    whole.add(np.arange(len(sets)), sigs)
    cut = len(sets) // 2
    first = LSHIndex(bands, rows)
    first.add(np.arange(cut), sigs[:cut])
    # query the second batch against the first before adding it
    old_new = {(j, i) for i in range(cut, len(sets)) for j in first.candidates(sigs[i])}
    first.add(np.arange(cut, len(sets)), sigs[cut:])
    assert list(first.candidate_pairs()) == list(whole.candidate_pairs())
    assert old_new == {(i, j) for i, j in whole.candidate_pairs() if i < cut <= j}
    # save / load: a later run dedupes new documents against the saved corpus without its signatures
    first.save(tmp_path / "index.npz")
    loaded = LSHIndex.load(tmp_path / "index.npz")
    assert (loaded.bands, loaded.rows, len(loaded)) == (bands, rows, len(sets))
    assert list(loaded.candidate_pairs()) == list(whole.candidate_pairs())
    for i in (0, cut, len(sets) - 1):
        assert loaded.candidates(sigs[i]) == whole.candidates(sigs[i]) and i in loaded.candidates(sigs[i])
    with pytest.raises(ValueError, match="unique"):
        loaded.add([0], sigs[:1])


def test_band_hashes_depend_on_band_values_only() -> None:
    sigs = np.arange(2 * 128, dtype=np.uint32).reshape(2, 128)
    sigs[1, :5] = sigs[0, :5]
    keys = band_hashes(sigs, 25, 5)
    assert keys.shape == (2, 25) and keys.dtype == np.uint64
    assert keys[0, 0] == keys[1, 0] and np.all(keys[0, 1:] != keys[1, 1:])
    same_values_other_band = np.tile(sigs[0, :5], 25).reshape(1, 125)
    assert len(set(band_hashes(same_values_other_band, 25, 5)[0].tolist())) == 25


def test_union_find_clusters_are_transitive() -> None:
    groups = UnionFind(7)
    for a, b in [(0, 3), (3, 5), (1, 2), (5, 0)]:
        groups.union(a, b)
    assert groups.find(0) == groups.find(5) and groups.find(1) != groups.find(0)
    assert groups.groups(min_size=2) == [[0, 3, 5], [1, 2]]
    assert groups.groups() == [[0, 3, 5], [1, 2], [4], [6]]


def test_clusters_chain_through_verified_pairs() -> None:
    """A ~ B and B ~ C put A and C together even when A and C are not similar themselves."""
    words = [f"w{i}" for i in range(100)]  # distinct words, so the similarities are exact by construction
    extra = [f"x{i}" for i in range(24)]
    a, b, c = words, words[:88] + extra[:12], words[:76] + extra  # J(a,b)=.78, J(b,c)=.71, J(a,c)=.60
    other = real_paragraphs()[1].split()
    sets = [shingles(" ".join(t)) for t in (a, other, b, c)] + [np.zeros(0, np.uint64)] * 2
    assert jaccard(sets[0], sets[2]) >= 0.7 and jaccard(sets[2], sets[3]) >= 0.7 > jaccard(sets[0], sets[3])
    # (42, 3) bands x rows: a candidate with probability ~1 at J >= 0.7, so the test is about union-find
    assert near_duplicate_clusters(sets, threshold=0.7, params=(42, 3)) == [[0, 2, 3]]


def test_choose_keepers_prefers_score_then_earliest() -> None:
    clusters = [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    scores = [5, 9, 9, None, 1, None, None, 3, 3]
    order = [0, 4, 2, 0, 9, 7, 3, 1, 1]
    assert choose_keepers(clusters, scores, order) == {2, 4, 6, 7}
    assert choose_keepers(clusters, scores) == {1, 4, 5, 7}
    assert choose_keepers([[10, 11]], {10: 0.0, 11: None}, {10: 5, 11: 1}) == {10}
