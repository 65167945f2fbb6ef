"""Training batches drawn from token shards, addressed by step so that any run can resume anywhere.

The sequences of optimizer step ``s`` are random windows whose start offsets come from a generator
seeded with ``(seed, s)``. Process ``r`` of ``world`` takes every ``world``-th group of ``micro_batch``
of them, so 1 process and K processes see the same sequences in each step, and the data position of a
run is nothing but its step number.

A window of ``seq_len + 1`` tokens starts at an offset drawn from ``[0, count - seq_len - 1)``, so a shard's last
window is drawn only when it is its one window: drawing it as well would move the windows of every seed, and a run
resumed from a checkpoint of an earlier version would change its data order midway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpt2cli.bpe.shards import TokenShard
from gpt2cli.errors import Gpt2Error


def check_token_ids(shard: TokenShard, vocab_size: int, chunk: int = 1 << 24) -> None:
    """Fail on a token id outside the vocabulary before training: the embedding lookup would crash on it
    (or, with a vocabulary padded for speed, silently train on a padding row). One pass over the shard."""
    tokens = shard.tokens()
    for start in range(0, shard.count, chunk):
        block = np.asarray(tokens[start : start + chunk])
        if int(block.max()) >= vocab_size:
            at = int(np.argmax(block >= vocab_size))
            raise Gpt2Error(
                f"{shard.path}: token {start + at} is id {block[at]}, outside the vocabulary of {vocab_size} tokens"
            )


@dataclass
class Batches:
    shard: TokenShard
    seq_len: int
    micro_batch: int
    seed: int

    def __post_init__(self) -> None:
        self.tokens = self.shard.tokens()
        if not fits(self.shard, self.seq_len):
            raise Gpt2Error(
                f"{self.shard.path} holds {self.shard.count} tokens, fewer than one sequence of {self.seq_len} + 1"
            )

    def starts(self, key: tuple[int, ...], count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, *key])
        return rng.integers(0, max(self.shard.count - self.seq_len - 1, 1), size=count)

    def window(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64) for s in starts])
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    def train_step(self, step: int, accum: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches (inputs, targets) that process ``rank`` trains on in optimizer step ``step``."""
        starts = self.starts((step,), accum * world * self.micro_batch).reshape(accum, world, self.micro_batch)
        return [self.window(starts[m, rank]) for m in range(accum)]

    def eval_batches(self, count: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        """The same held-out sequences at every evaluation, shared out among processes: (inputs, targets, counted).

        Every process gets ceil(count / world) batches, so that all run as many forward passes (under FSDP each one
        gathers the weights from all of them); those past its share repeat batch 0 and are not counted.
        """
        starts = self.starts((2**31 - 1,), count * self.micro_batch).reshape(count, self.micro_batch)
        batches = []
        for i in range(rank, -(-count // world) * world, world):
            counted = i < count
            batches.append((*self.window(starts[i if counted else 0]), counted))
        return batches


def fits(shard: TokenShard, seq_len: int) -> bool:
    """Whether ``shard`` holds one window: a sequence and the token after its last, its targets."""
    return shard.count >= seq_len + 1
