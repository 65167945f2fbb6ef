"""The options of a `gpt2 dedupe` run, on their own: the CLI builds them, screening and duplicate detection read
them, and --incremental compares them with those a corpus was made with, without importing the stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt2cli.dedupe.filters import LANGUAGES, QualityConfig
from gpt2cli.dedupe.minhash import DEFAULT_LSH_RECALL
from gpt2cli.errors import UsageError

# Beyond this, signatures cost 4 bytes per permutation per document and the LSH band search grows, for no
# accuracy a corpus needs (the paper's dedupe is coarser still).
MAX_NUM_PERM = 1024


@dataclass(frozen=True)
class DedupeConfig:
    near_threshold: float = 0.5  # Jaccard of word 5-gram sets; OpenWebText's value (see README)
    num_perm: int = 128
    lsh_recall: float = DEFAULT_LSH_RECALL  # chance that a pair at the threshold becomes a candidate (bands x rows)
    shingle_size: int = 5
    val_fraction: float = 0.05  # the paper's held-out WebText sample was 5%
    remove_wikipedia: bool = True
    language: str | None = "en"
    quality: QualityConfig = field(default_factory=QualityConfig)
    bloom: bool = False  # store an 8-gram Bloom filter of the corpus (paper section 4: overlap with eval sets)
    drop_overlap: float | None = None  # drop documents sharing more than this share of 8-grams with eval_bloom
    eval_bloom: str | None = None  # path of an 8-gram Bloom filter of evaluation sets (made by the stage)
    workers: int = 0  # processes for the per-document steps; 0 = all cores

    def validate(self) -> None:
        """Refuse, naming the option, values the stage would crash on or silently misuse (a val share of 2
        leaves no training documents), before any work."""
        problems = [
            (not 0 < self.near_threshold < 1, f"--threshold must be in (0, 1), got {self.near_threshold}"),
            (
                not 1 <= self.num_perm <= MAX_NUM_PERM,
                f"--num-perm must be in [1, {MAX_NUM_PERM}], got {self.num_perm}",
            ),
            (not 0 < self.lsh_recall < 1, f"--lsh-recall must be in (0, 1), got {self.lsh_recall}"),
            (not 0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (
                self.language is not None and self.language not in LANGUAGES,
                f"--language must be 'any' or one of {', '.join(LANGUAGES)}; got {self.language!r}",
            ),
            (
                not 0 <= self.quality.min_words <= self.quality.max_words,
                f"--min-words must be in [0, {self.quality.max_words}], got {self.quality.min_words}",
            ),
            (
                self.drop_overlap is not None and not 0 <= self.drop_overlap <= 1,
                f"--drop-overlap must be in [0, 1], got {self.drop_overlap}",
            ),
            (self.workers < 0, f"--workers must be 0 (all cores) or more, got {self.workers}"),
        ]
        for failed, message in problems:
            if failed:
                raise UsageError(message)
