"""What a run produced, on one screen: the artifacts and their lineage, the validation-loss curve, the
evaluation beside the paper's numbers, a few samples, and whether the model learned anything at all.

"Learned" is measured against the unigram entropy of the tokens it trained on: a model that knows only
how often each token occurs scores that many nats per token at best, so a validation loss well below it
means the model uses context.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.artifacts import Artifact, Store
from gpt2cli.errors import Gpt2Error


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution given by ``counts`` (zeros ignored)."""
    total = counts.sum()
    if total <= 0:
        raise Gpt2Error("no tokens to measure")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def ascii_plot(points: list[tuple[float, float]], width: int = 60, height: int = 12) -> list[str]:
    """A small terminal plot of ``points`` (x, y), y axis labelled at the top and bottom rows."""
    if not points:
        return ["(no points)"]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for x, y in points:
        col = round((x - x0) / (x1 - x0) * (width - 1)) if x1 > x0 else 0
        row = round((y1 - y) / (y1 - y0) * (height - 1)) if y1 > y0 else height - 1
        grid[row][col] = "*"
    label = max(len(f"{y1:.2f}"), len(f"{y0:.2f}"))
    lines = []
    for i, row in enumerate(grid):
        tick = f"{y1:.2f}" if i == 0 else f"{y0:.2f}" if i == height - 1 else ""
        lines.append(f"{tick:>{label}} |{''.join(row)}")
    lines.append(" " * label + " +" + "-" * width)
    lines.append(" " * label + f"  {x0:g}{' ' * max(1, width - len(f'{x0:g}') - len(f'{x1:g}'))}{x1:g}")
    return lines


def loss_curve(model: Artifact, key: str = "val_loss") -> list[tuple[float, float]]:
    """(step, ``key``) of the training run, from the model's metrics.jsonl; rows without a value are skipped
    (a run on tokens without a validation split logs ``"val_loss": null``)."""
    path = model.path / "metrics.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get(key) is not None:
            points.append((float(row["step"]), float(row[key])))
    return points


def val_loss_curve(model: Artifact) -> list[tuple[float, float]]:
    """(step, validation loss) of the training run, from the model's metrics.jsonl."""
    return loss_curve(model, "val_loss")


def _input_entry(artifact: Artifact, kind: str) -> dict[str, Any] | None:
    return next((i for i in artifact.manifest.get("inputs", []) if str(i.get("ref", "")).startswith(kind)), None)


def learning_check(store: Store, model: Artifact) -> dict[str, Any]:
    """Validation loss against the unigram entropy of the training tokens (both in nats per token)."""
    from gpt2cli.bpe.shards import TokenShard

    tokens_entry = _input_entry(model, "tokens@")
    if tokens_entry is None:
        raise Gpt2Error(f"{model.ref} does not name the tokens it trained on")
    tokens = store.recorded(model, tokens_entry)  # another home's, where the model trained on that home's tokens
    shard = TokenShard.open(tokens.path / "train.bin")
    counts = np.bincount(np.asarray(shard.tokens()), minlength=shard.vocab_size)
    entropy = unigram_entropy(counts)
    val_loss = model.summary.get("val_loss")
    out: dict[str, Any] = {"tokens": tokens.ref, "unigram_entropy": round(entropy, 4), "val_loss": val_loss}
    if val_loss is None:  # the same keys, with no verdict
        out.update(below_unigram=None, learned=None, statement=no_validation_statement(tokens, model))
        return out
    out["below_unigram"] = round(entropy - val_loss, 4)
    out["learned"] = val_loss < entropy - 0.5  # at least 0.5 nats below: well below, not noise
    out["statement"] = learning_statement(val_loss, entropy, shard.count, out["learned"])
    return out


def no_validation_statement(tokens: Artifact, model: Artifact) -> str:
    """What the report says instead of a verdict when training computed no validation loss."""
    from gpt2cli.bpe.shards import validation_gap

    seq_len = model.params.get("seq_len")
    gap = validation_gap(tokens, int(seq_len)) if isinstance(seq_len, int) else None
    return "no validation loss, so whether the model learned beyond token frequencies is not measured: " + (
        f"{gap}, and train again" if gap else "none was recorded in training"
    )


def learning_statement(val_loss: float, entropy: float, tokens: int, learned: bool) -> str:
    gap = entropy - val_loss
    return (
        f"validation loss {val_loss:.3f} nats/token is {abs(gap):.3f} {'below' if gap >= 0 else 'above'} the unigram "
        f"entropy {entropy:.3f} of the {tokens:,} training tokens (perplexity {math.exp(val_loss):.1f} vs "
        f"{math.exp(entropy):.1f}): the model "
        + ("uses context, not only token frequencies" if learned else "has NOT learned beyond frequencies")
    )


def run_summary(store: Store, model_ref: str = "model", eval_ref: str | None = "eval") -> dict[str, Any]:
    """Everything `gpt2 report` shows, as data."""
    from gpt2cli.eval.stage import comparison_rows

    model = store.resolve(model_ref, "model", option="report")
    summary: dict[str, Any] = {"model": model.ref, "lineage": store.lineage(model)}
    png = model.path / "loss.png"
    summary["loss_png"] = str(png) if png.is_file() else None
    summary["val_loss_curve"] = val_loss_curve(model)
    summary["learning"] = learning_check(store, model)
    summary["eval"], summary["eval_rows"] = None, []  # the same keys whether or not the model was evaluated
    if eval_ref is not None and store.latest("eval") is not None:
        evaluation = store.resolve(eval_ref)
        if (_input_entry(evaluation, "model@") or {}).get("ref") == model.ref:
            summary["eval"] = evaluation.ref
            summary["eval_rows"] = comparison_rows(evaluation)
    return summary


def list_versions(store: Store) -> list[dict[str, Any]]:
    """The current version of every kind in the store (what a bare reference means), oldest kind first."""
    rows = []
    for kind in store.kinds():
        current = store.current(kind)
        if current is not None:
            rows.append({"kind": kind, "ref": current.ref, "created_at": current.manifest.get("created_at"),
                         "path": str(Path(current.path))})  # fmt: skip
    return sorted(rows, key=lambda r: r["created_at"] or "")
