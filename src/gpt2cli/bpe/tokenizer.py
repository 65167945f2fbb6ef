"""GPT-2's byte-level BPE (paper section 2.2): the reference algorithm and a fast engine with identical ids.

The reference (`bpe_merge`) is the paper's algorithm on one pre-token: repeatedly merge the adjacent pair
with the lowest merge rank. It runs in O(n log n) with a heap, so a 1 MB run of one character takes
seconds, not the minutes a rescan-per-merge encoder needs. The engine is tiktoken's Rust core fed with
this tokenizer's own ranks; it is used only when the vocabulary is one on which rank-by-token and
rank-by-pair merging provably agree (checked at load), and the tests prove id equality on real and
random text. Otherwise encoding falls back to the reference.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import regex

from gpt2cli.errors import Gpt2Error
from gpt2cli.textutil import valid_unicode

log = logging.getLogger(__name__)

# The paper's pre-tokenizer: merges never cross the pieces it cuts (OpenAI's src/encoder.py).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
ENCODER_JSON, VOCAB_BPE, TOKENIZER_JSON = "encoder.json", "vocab.bpe", "tokenizer.json"

# tiktoken's regex engine overflows its stack on very long whitespace runs (seen at 1 MB of spaces);
# such runs are cut out and encoded as one pre-token, which is exactly what the pattern makes of them.
_LONG = 4096
_LONG_WHITESPACE = regex.compile(rf"\s{{{_LONG},}}")
_WHITESPACE_PAIR = regex.compile(r"\s(?=\s)")
_WHITESPACE_RUN = regex.compile(r"\s*")


def _has_long_whitespace(text: str) -> bool:
    """Whether ``text`` has a whitespace run of ``_LONG`` or more, cheaply: such a run covers two
    consecutive multiples of ``_LONG / 2`` and everything between them, so only those stretches are read."""
    if len(text) < _LONG:
        return False
    step = _LONG // 2
    for m in _WHITESPACE_PAIR.finditer(text[::step]):
        start = m.start() * step
        if _WHITESPACE_RUN.match(text, start, start + step).end() == start + step and _LONG_WHITESPACE.search(
            text, max(start - _LONG, 0), start + step + _LONG
        ):
            return True
    return False


_PRETOKEN = regex.compile(GPT2_PATTERN)

# Work for the engine's threads (it releases the GIL): texts at least this long are cut in pieces.
_PARALLEL_CHARS = 1 << 17
# No pre-token reaches from a non-space character into the whitespace after it, and the pattern looks
# only ahead, so the text can be cut there and its pieces encoded apart with the same ids.
_PIECE_BOUNDARY = regex.compile(r"(?<=\S)\s")


def split_at_piece_boundaries(text: str, parts: int) -> list[str]:
    """``text`` cut into at most ``parts`` nearly equal pieces, only where the pre-tokenizer always cuts."""
    cuts = [0]
    for k in range(1, parts):
        m = _PIECE_BOUNDARY.search(text, max(cuts[-1] + 1, len(text) * k // parts))
        if m is None:
            break
        cuts.append(m.start())
    cuts.append(len(text))
    return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def _contiguous_groups(sizes: Sequence[int], groups: int) -> list[range]:
    """Index ranges of ``sizes`` in order, cut into at most ``groups`` runs of nearly equal total size."""
    total, runs, start, acc = sum(sizes), [], 0, 0
    if total == 0:
        return [range(len(sizes))]
    for i, size in enumerate(sizes):
        acc += size
        if acc * groups >= total * (len(runs) + 1) and i + 1 < len(sizes) and len(runs) + 1 < groups:
            runs.append(range(start, i + 1))
            start = i + 1
    runs.append(range(start, len(sizes)))
    return runs


Merge = tuple[bytes, bytes]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 maps to itself, the rest to U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def byte_order() -> list[int]:
    """The order of the 256 base tokens in GPT-2's encoder.json: printable bytes first, then the rest."""
    table = bytes_to_unicode()
    return sorted(range(256), key=lambda b: ord(table[b]))


@lru_cache(maxsize=1)
def _printable_table() -> dict[int, str]:
    return {b: c for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    return token.decode("latin-1").translate(_printable_table())


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def str_to_token(text: str) -> bytes:
    inverse = _unicode_to_bytes()
    try:
        return bytes(inverse[c] for c in text)
    except KeyError as e:
        raise Gpt2Error(f"{text!r} is not in GPT-2's byte alphabet (character {e.args[0]!r})") from None


def pretokenize(text: str) -> list[str]:
    return _PRETOKEN.findall(text)


def bpe_merge(piece: bytes, merge_ranks: dict[Merge, int]) -> list[bytes]:
    """Split one pre-token into tokens: merge the lowest-ranked adjacent pair until none is in the merges.

    Equal ranks (the same pair occurring several times) merge left to right, as GPT-2's encoder does.
    A heap of candidate pairs with lazy deletion keeps this O(n log n) on long pieces.
    """
    parts: list[bytes | None] = [piece[i : i + 1] for i in range(len(piece))]
    if len(parts) < 2:
        return list(parts)  # type: ignore[arg-type]
    nxt = [*range(1, len(parts)), -1]
    prv = list(range(-1, len(parts) - 1))
    heap = []
    for i in range(len(parts) - 1):
        rank = merge_ranks.get((parts[i], parts[i + 1]))  # type: ignore[arg-type]
        if rank is not None:
            heap.append((rank, i, parts[i], parts[i + 1]))
    heapq.heapify(heap)
    while heap:
        rank, i, left, right = heapq.heappop(heap)
        j = nxt[i]
        if parts[i] != left or j < 0 or parts[j] != right:
            continue  # stale: one side has merged since this entry was pushed
        parts[i] = left + right  # type: ignore[operator]
        parts[j] = None
        nxt[i] = nxt[j]
        if nxt[i] >= 0:
            prv[nxt[i]] = i
        for a, b in ((prv[i], i), (i, nxt[i])):
            if a >= 0 and b >= 0 and (r := merge_ranks.get((parts[a], parts[b]))) is not None:  # type: ignore[arg-type]
                heapq.heappush(heap, (r, a, parts[a], parts[b]))
    return [p for p in parts if p is not None]


def _merge(line: str, where: str) -> Merge:
    pair = line.split(" ")
    if len(pair) != 2:
        raise Gpt2Error(f"{where}: a merge is two tokens separated by one space: {line!r}")
    return str_to_token(pair[0]), str_to_token(pair[1])


class Tokenizer:
    """A byte-level BPE vocabulary: 256 byte tokens, merges in rank order, special tokens last."""

    def __init__(self, vocab: dict[bytes, int], merges: Sequence[Merge], special_tokens: dict[str, int] | None = None):
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = dict(special_tokens if special_tokens is not None else {})
        self._check()
        self.merge_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.id_to_bytes: list[bytes] = [b""] * self.vocab_size
        for token, i in self.vocab.items():
            self.id_to_bytes[i] = token
        for text, i in self.special_tokens.items():
            self.id_to_bytes[i] = text.encode()
        self._piece_cache: dict[str, list[int]] = {}

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_merges(cls, merges: Sequence[Merge], *, eot: bool = True) -> Tokenizer:
        """GPT-2's id layout: bytes in encoder.json order (ids 0-255), merge k as id 256+k, then <|endoftext|>."""
        vocab = {bytes([b]): i for i, b in enumerate(byte_order())}
        for left, right in merges:
            vocab.setdefault(left + right, len(vocab))
        return cls(vocab, merges, {EOT: len(vocab)} if eot else {})

    @classmethod
    def from_files(cls, encoder_json: Path | str, vocab_bpe: Path | str) -> Tokenizer:
        """Read GPT-2's own files (OpenAI's or ones this tool wrote)."""
        try:
            encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise Gpt2Error(f"cannot read {encoder_json}: {e}") from None
        if not isinstance(encoder, dict):
            raise Gpt2Error(f"{encoder_json} is not a JSON object of token -> id")
        try:
            lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise Gpt2Error(f"cannot read {vocab_bpe}: {e}") from None
        merges = []
        for lineno, line in enumerate(lines, 1):
            if (lineno == 1 and line.startswith("#version")) or not line.strip():
                continue
            merges.append(_merge(line, f"{vocab_bpe}:{lineno}"))
        return cls._from_encoder(encoder, merges, f"{vocab_bpe} does not match {encoder_json}")

    @classmethod
    def from_tokenizer_json(cls, path: Path | str) -> Tokenizer:
        """Read a Hugging Face ``tokenizer.json`` of a byte-level BPE (all recent transformers save of GPT-2)."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            model, added = raw["model"], raw.get("added_tokens") or []
            if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
                raise ValueError(f"its model is {model.get('type')!r}, not a byte-level BPE")
            encoder = {**model["vocab"], **{t["content"]: t["id"] for t in added}}
            merges = [_merge(m if isinstance(m, str) else " ".join(m), f"{path}: merge {k}")
                      for k, m in enumerate(model.get("merges") or [])]  # fmt: skip
        except Gpt2Error:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise Gpt2Error(f"cannot read {path}: {e}") from None
        return cls._from_encoder(encoder, merges, f"{path}")

    @classmethod
    def _from_encoder(cls, encoder: dict[str, int], merges: list[Merge], where: str) -> Tokenizer:
        # A special token is a <|name|> that no merge produces: a learned `<|>` or `<||>` (Haskell's operators)
        # has that shape too, and is ordinary text.
        learned = {token_to_str(left + right) for left, right in merges}
        special = {t: i for t, i in encoder.items() if t.startswith("<|") and t.endswith("|>") and t not in learned}
        try:
            vocab = {str_to_token(t): i for t, i in encoder.items() if t not in special}
            return cls(vocab, merges, special)
        except Gpt2Error as e:
            raise Gpt2Error(f"{where}: {e}") from None

    @classmethod
    def load(cls, source: Any) -> Tokenizer:
        """From an artifact that carries a tokenizer (tokenizer, model), a reference to one, or a directory
        with GPT-2's encoder.json + vocab.bpe, or Hugging Face's vocab.json + merges.txt or tokenizer.json."""
        from gpt2cli.artifacts import Artifact, Store

        if isinstance(source, Artifact):
            directory = source.path
        elif isinstance(source, (str, Path)) and Path(source).is_dir():
            directory = Path(source)
        else:
            directory = Store().resolve(str(source)).path
        for encoder, merges in ((ENCODER_JSON, VOCAB_BPE), ("vocab.json", "merges.txt")):
            if (directory / encoder).is_file() and (directory / merges).is_file():
                return cls.from_files(directory / encoder, directory / merges)
        if (directory / TOKENIZER_JSON).is_file():
            return cls.from_tokenizer_json(directory / TOKENIZER_JSON)
        raise Gpt2Error(
            f"{directory} has no tokenizer files (encoder.json + vocab.bpe, vocab.json + merges.txt, or tokenizer.json)"
        )

    def _check(self) -> None:
        ids = [*self.vocab.values(), *self.special_tokens.values()]
        if sorted(ids) != list(range(len(ids))):
            raise Gpt2Error(f"token ids are not 0..{len(ids) - 1} without gaps or repeats")
        missing = [b for b in range(256) if bytes([b]) not in self.vocab]
        if missing:
            raise Gpt2Error(f"{len(missing)} of the 256 byte tokens are missing (first: byte {missing[0]})")
        for rank, (left, right) in enumerate(self.merges):
            for part in (left, right, left + right):
                if part not in self.vocab:
                    merge = f"{token_to_str(left)} {token_to_str(right)}"
                    raise Gpt2Error(f"merge {rank} ({merge}) uses unknown token {token_to_str(part)!r}")

    # -- properties --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        if EOT not in self.special_tokens:
            raise Gpt2Error(f"this tokenizer has no {EOT} token")
        return self.special_tokens[EOT]

    @cached_property
    def engine_compatible(self) -> bool:
        """Whether tiktoken's rule (merge the adjacent pair whose concatenation has the lowest id) can stand in
        for GPT-2's rule (merge the listed pair with the lowest merge rank).

        Needs: merge k creates a new token whose id is above every earlier merge's, and every multi-byte
        token is made by a merge. Under these, GPT-2's files and vocabularies this tool trains give the
        same ids both ways; the tests check it on real and random text.
        """
        last = -1
        made: set[bytes] = set()
        for left, right in self.merges:
            token = left + right
            if token in made or self.vocab[token] <= last:
                return False
            made.add(token)
            last = self.vocab[token]
        return all(len(t) == 1 or t in made for t in self.vocab)

    @cached_property
    def _engine(self) -> Any:
        if not self.engine_compatible:
            log.warning("vocabulary is not tiktoken-compatible; encoding with the (slower) reference BPE")
            return None
        try:
            import tiktoken
        except ImportError:
            return None
        return tiktoken.Encoding(
            name=f"gpt2cli-{self.vocab_size}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=self.vocab,
            special_tokens=self.special_tokens,
        )

    # -- encoding ----------------------------------------------------------------------------------

    def encode_reference(self, text: str) -> list[int]:
        """The paper's algorithm in plain Python: pre-tokenize, then BPE each piece. Slow; the oracle."""
        ids: list[int] = []
        for piece in pretokenize(valid_unicode(text)):
            cached = self._piece_cache.get(piece)
            if cached is None:
                cached = [self.vocab[t] for t in bpe_merge(piece.encode("utf-8"), self.merge_ranks)]
                if len(self._piece_cache) < 100_000:
                    self._piece_cache[piece] = cached
            ids.extend(cached)
        return ids

    def _encode_ordinary(self, text: str, num_threads: int = 0) -> list[int]:
        """Ids of a long text are encoded by pieces on all cores (``num_threads``, 0: one per core)."""
        threads = num_threads or os.cpu_count() or 1
        if self._engine is None or threads == 1 or len(text) < _PARALLEL_CHARS:
            return self._encode_piece(text)
        pieces = split_at_piece_boundaries(text, 4 * threads)
        with ThreadPoolExecutor(threads) as pool:
            return list(itertools.chain.from_iterable(pool.map(self._encode_piece, pieces)))

    def _encode_piece(self, text: str) -> list[int]:
        engine = self._engine
        if engine is None:
            return self.encode_reference(text)
        if not _has_long_whitespace(text):
            return engine.encode_ordinary(text)  # tiktoken replaces lone surrogates itself
        text = valid_unicode(text)
        # A maximal whitespace run [i, j) is its own pre-token(s): the pattern leaves its last character to
        # the next piece when text follows, and no piece reaches into it from the left.
        ids: list[int] = []
        start = 0
        for m in _LONG_WHITESPACE.finditer(text):
            i, j = m.span()
            cut = j if j == len(text) else j - 1
            ids += engine.encode_ordinary(text[start:i])
            ids += [self.vocab[t] for t in bpe_merge(text[i:cut].encode("utf-8"), self.merge_ranks)]
            start = cut
        return ids + engine.encode_ordinary(text[start:])

    def encode(self, text: str, *, allowed_special: Literal["all"] | Iterable[str] = ()) -> list[int]:
        """Token ids of ``text``. Special-token strings are ordinary text unless listed in ``allowed_special``
        (or ``"all"``): web pages that literally contain "<|endoftext|>" must not inject document breaks.
        Lone surrogates, which have no UTF-8 form, encode as U+FFFD."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        if unknown := allowed - set(self.special_tokens):
            raise Gpt2Error(f"unknown special tokens: {sorted(unknown)}")
        if not allowed:
            return self._encode_ordinary(text)
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        ids: list[int] = []
        for k, part in enumerate(splitter.split(text)):
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids += self._encode_ordinary(part)
        return ids

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 0) -> list[list[int]]:
        """Ids of many documents (special-token strings as ordinary text) on ``num_threads`` (0: one per core).

        The engine releases the GIL, so threads use every core; each thread gets a run of documents
        rather than one at a time, which keeps the hand-off cost off short documents.
        """
        threads = num_threads or os.cpu_count() or 1
        if len(texts) == 1:  # one long text is cut into pieces, as encode() does
            return [self._encode_ordinary(texts[0], threads)]
        sizes = [len(t) for t in texts]
        if self._engine is None or threads == 1 or sum(sizes) < _PARALLEL_CHARS:
            return [self._encode_ordinary(t, 1) for t in texts]

        def encode_run(run: range) -> list[list[int]]:
            return [self._encode_piece(texts[i]) for i in run]

        with ThreadPoolExecutor(threads) as pool:
            return list(itertools.chain.from_iterable(pool.map(encode_run, _contiguous_groups(sizes, 4 * threads))))

    # -- decoding ----------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self.id_to_bytes[i] for i in ids)
        except (IndexError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size)
            raise Gpt2Error(f"token id {bad!r} is outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``; byte sequences that are not UTF-8 (a token stream cut mid-character) become U+FFFD
        by default, as GPT-2's encoder does. Use ``decode_bytes`` for the exact bytes."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors=errors)

    # -- files -------------------------------------------------------------------------------------

    def save(self, directory: Path | str) -> list[Path]:
        """Write GPT-2's encoder.json + vocab.bpe and a Hugging Face tokenizer.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        encoder = {token_to_str(t): i for t, i in self.vocab.items()} | self.special_tokens
        encoder = dict(sorted(encoder.items(), key=lambda kv: kv[1]))
        merges = [f"{token_to_str(a)} {token_to_str(b)}" for a, b in self.merges]
        files = [directory / ENCODER_JSON, directory / VOCAB_BPE, directory / TOKENIZER_JSON]
        files[0].write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
        files[1].write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
        files[2].write_text(json.dumps(self._hf_tokenizer_json(encoder, merges), ensure_ascii=False), encoding="utf-8")
        return files

    def _hf_tokenizer_json(self, encoder: dict[str, int], merges: list[str]) -> dict[str, Any]:
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t, i in self.special_tokens.items()
            ],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": {t: i for t, i in encoder.items() if t not in self.special_tokens},
                "merges": merges,
            },
        }
