"""Multiple-choice scoring shared by the zero-shot tasks that pick one of several continuations (CBT, Winograd).

Every candidate of an example continues the same context, so the context is run through the model once, into a
KV cache; the cache is then copied to one row per candidate and all candidates are scored as one batch from it.
Candidates of different lengths are right-padded: under causal attention a padded position never influences an
earlier one, and padded positions are not scored. Log-softmax is taken in float32 and sums kept in float64, as
in ``gpt2cli.eval.lm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.eval.lm import _autocast
from gpt2cli.model import GPT, KVCache, check_finite


@dataclass(frozen=True)
class ChoiceScore:
    """How likely one candidate continuation is, given the shared context."""

    logprob: float  # nats, summed over the candidate's tokens
    tokens: int
    token_logprobs: tuple[float, ...] = field(repr=False)  # one per token, for partial sums (Winograd)

    def logprob_from(self, start: int) -> float:
        """Log-probability of the tokens from ``start`` on (the part of a continuation after a choice)."""
        return math.fsum(self.token_logprobs[start:])


def best_choice(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on ties, so results never depend on anything but the scores.
    A score that is not finite is a ``NotFinite`` error: every comparison with NaN is false, so ``max`` would
    pick the first candidate, and an accuracy built on that looks like a real one."""
    if not scores:
        raise Gpt2Error("no candidates to choose from")
    check_finite(scores)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def fit_context(context: Sequence[int], longest: int, n_ctx: int) -> list[int]:
    """The last tokens of ``context`` that leave room for a ``longest``-token candidate in ``n_ctx`` positions.

    The model reads the context and every candidate token but the last (the last one is only predicted), so
    ``n_ctx - longest + 1`` context tokens are kept.
    """
    if longest > n_ctx:
        raise Gpt2Error(f"a candidate of {longest} tokens does not fit the model's context ({n_ctx})")
    return list(context[-(n_ctx - longest + 1) :])


@torch.no_grad()
def score_choices(
    model: GPT,
    context: Sequence[int],
    candidates: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[ChoiceScore]:
    """Summed log-probability of each candidate's tokens given ``context`` (token ids), in candidate order.

    The context is computed once; candidates are scored ``batch_size`` at a time from copies of its cache.
    Truncation: when the context and the longest candidate do not fit the model's ``n_ctx``, the context is
    cut from the left to its last ``n_ctx - L + 1`` tokens (L = the longest candidate's length; its last token
    is never fed to the model), the same for every candidate so that all are compared on the same context.
    ``context`` must not be empty (start it with ``<|endoftext|>``); neither may any candidate.
    ``dtype`` bfloat16/float16 runs the model under autocast.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if not candidates:
        return []
    if not context:
        raise Gpt2Error("empty context: the first candidate token needs something to be predicted from")
    if any(len(c) == 0 for c in candidates):
        raise Gpt2Error("a candidate continuation has no tokens")
    ctx = fit_context(context, max(map(len, candidates)), model.config.n_ctx)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[ChoiceScore] = []
    try:
        cache = KVCache(model.config)
        with _autocast(dev, dtype):
            last = model(torch.tensor([ctx], dtype=torch.long, device=dev), cache, last_only=True)
        first = F.log_softmax(last[0, -1].float(), dim=-1)  # the distribution of every candidate's first token
        for start in range(0, len(candidates), batch_size):
            chunk = candidates[start : start + batch_size]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, cand in enumerate(chunk):
                ids[row, : len(cand)] = torch.tensor(list(cand), dtype=torch.long)
            ids = ids.to(dev)
            logp = torch.empty(len(chunk), width, dtype=torch.float32, device=dev)
            logp[:, 0] = first[ids[:, 0]]
            if width > 1:
                with _autocast(dev, dtype):
                    logits = model(ids[:, :-1], cache.expand(len(chunk), len(ctx) + width - 1))
                logp[:, 1:] = F.log_softmax(logits.float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
            for row, values in enumerate(logp.cpu().tolist()):
                kept = tuple(values[: len(chunk[row])])  # padded positions are dropped
                out.append(ChoiceScore(math.fsum(kept), len(kept), kept))
    finally:
        model.train(was_training)
    return out
