"""Zero-shot evaluation: gpt2cli's LAMBADA and language-modelling scorers vs EleutherAI's lm-evaluation-harness
(lm-eval, Hugging Face `hf` backend), same model, same data, same batch size, float32 on the CPU.

Tasks, both sides on the same documents (the first ``--limit`` of each; lm-eval's ``limit`` takes the same ones):

* lambada: OpenAI's ``lambada_test.jsonl``. lm-eval runs ``lambada_openai_local`` (benchmarks/lm_eval_tasks/, its
  ``lambada_openai`` task reading the local file): perplexity = exp(-mean log-likelihood of the target),
  acc = the target is the greedy continuation. Ours: `read_lambada` + `evaluate_lambada` (no stop-word filter),
  ``ppl`` and ``accuracy``, which are the same quantities.
* wikitext: the WikiText-2 raw test file cut into 62 articles the way EleutherAI/wikitext_document_level does,
  each de-tokenized by lm-eval's ``wikitext_detokenizer``. lm-eval runs ``wikitext_local`` (its ``wikitext`` task
  reading the local file): `loglikelihood_rolling` per article. Ours: `evaluate_texts` over the articles (the same text,
  ``<|endoftext|>`` in front, ``stride == context`` with ``align_last``: lm-eval's windows, see below).
  Both sides' per-article NLL are turned
  into lm-eval's metrics with lm-eval's own counts (``process_results``: words = ``len(re.split(r"\\s+", page))``,
  UTF-8 bytes of the page before de-tokenizing): word_perplexity, byte_perplexity, bits_per_byte.

Windowing. lm-eval's rolling windows (``get_rolling_token_windows`` + ``make_disjoint_window``, max length = the
model's context) are disjoint blocks of ``n_ctx`` predictions, the LAST one of an article longer than the context
right-aligned (it reads the last ``n_ctx`` tokens and scores only the predictions not yet made). Ours gives the
same windows with ``align_last`` (what `gpt2 eval zero-shot` uses); without it the last window starts where the
previous one ended (less context for its predictions). The script also scores every article without
``align_last`` and compares that per article with lm-eval, to show what the alignment accounts for.

Timed: from the model directory on disk to the metrics, per task and side, best of ``--repeats`` (the sides
alternate), in one process, after a warm-up forward pass: ours = loading model and tokenizer, reading and
preparing the data, scoring; lm-eval = `lm_eval.simple_evaluate` (loads the model with transformers, builds the
task, scores; ``log_samples`` on, which the comparison needs; no bootstrap). The untimed extras (right-aligned
windows, LAMBADA subsets) come after.

Model: ``--model`` is a model artifact reference (default: the latest ``model`` in ``--home``, e.g. the one
``make demo`` trains), exported with `gpt2cli.export.export_hf`, or a Hugging Face GPT-2 directory; without one,
``--model random`` builds a randomly initialised "mini" GPT (seed 0) with OpenAI's GPT-2 tokenizer.

Needs lm-eval, which the project's .venv does not have: a separate virtualenv, set up once

    python3 -m venv /work/lmeval-venv
    /work/lmeval-venv/bin/pip install torch==2.13.0 "lm-eval[hf]"
    /work/lmeval-venv/bin/pip install -e .

Run from the repository root (needs ../shared/data):

    /work/lmeval-venv/bin/python benchmarks/bench_eval.py                     # first 1000 passages, all articles
    /work/lmeval-venv/bin/python benchmarks/bench_eval.py --limit 0           # everything
    /work/lmeval-venv/bin/python benchmarks/bench_eval.py --model random --tasks wikitext --limit 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tasks read local files; nothing may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("GPT2_EVAL_DATA") or REPO.parent / "shared" / "data")
TASKS_DIR = REPO / "benchmarks" / "lm_eval_tasks"
LM_EVAL_TASK = {"lambada": "lambada_openai_local", "wikitext": "wikitext_local"}

sys.path.insert(0, str(TASKS_DIR))
from local_data import wikitext_pages  # noqa: E402


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else (0.0 if a == b else math.inf)


def prepare_model(ref: str, home: Path, data: Path, out: Path) -> tuple[Path, str]:
    """A Hugging Face GPT-2 directory both sides load, and a description of the model."""
    from gpt2cli.artifacts import Store
    from gpt2cli.export import export_hf

    if ref == "random":
        from gpt2cli.bpe.tokenizer import Tokenizer
        from gpt2cli.model import GPT, config_for

        torch.manual_seed(0)
        GPT(config_for("mini", vocab_size=50257, pad_vocab_multiple=1)).save(out)
        Tokenizer.load(data / "gpt2-tokenizer").save(out)
        shutil.copyfile(out / "encoder.json", out / "vocab.json")
        shutil.copyfile(out / "vocab.bpe", out / "merges.txt")
        eot = "<|endoftext|>"
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 256, "bos_token": eot, "eos_token": eot,
                  "unk_token": eot, "add_prefix_space": False, "add_bos_token": False}  # fmt: skip
        (out / "tokenizer_config.json").write_text(json.dumps(config))
        return out, "random mini GPT (seed 0), GPT-2 tokenizer"
    path = Path(ref)
    if (path / "config.json").is_file() and not (path / "manifest.json").is_file():  # not an artifact directory
        return path, f"Hugging Face directory {path}"
    artifact = Store(home).resolve(ref)
    export_hf(artifact, out, overwrite=True)
    return out, f"{artifact.ref} ({artifact.manifest.get('command', '')})"


# -- ours ---------------------------------------------------------------------------------------------


def ours_lambada(model_dir: Path, path: Path, limit: int | None, batch_size: int) -> dict[str, Any]:
    from gpt2cli.bpe.tokenizer import Tokenizer
    from gpt2cli.eval.lambada import evaluate_lambada, read_lambada
    from gpt2cli.model import GPT

    model, tokenizer = GPT.load(model_dir).eval(), Tokenizer.load(model_dir)
    passages = read_lambada(path)[:limit]
    result = evaluate_lambada(model, tokenizer, passages, batch_size=batch_size, dtype=torch.float32)
    return {"perplexity": result.ppl, "acc": result.accuracy, "result": result, "passages": passages}


def ours_wikitext(model_dir: Path, path: Path, limit: int | None, batch_size: int) -> dict[str, Any]:
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from gpt2cli.bpe.tokenizer import Tokenizer
    from gpt2cli.eval.lm import evaluate_texts
    from gpt2cli.model import GPT

    model, tokenizer = GPT.load(model_dir).eval(), Tokenizer.load(model_dir)
    pages = wikitext_pages(path.read_text(encoding="utf-8"))[:limit]
    context = model.config.n_ctx
    texts = [wikitext_detokenizer({"page": page}) for page in pages]
    results = evaluate_texts(model, tokenizer, texts, unit="byte", units=[len(p.encode()) for p in pages],
                             context=context, stride=context, align_last=True, batch_size=batch_size,
                             dtype=torch.float32)  # fmt: skip
    per_doc = [(r.nll_sum, r.tokens) for r in results]
    return {"pages": pages, "per_doc": per_doc, **wikitext_metrics(pages, [nll for nll, _ in per_doc])}


def wikitext_metrics(pages: list[str], nlls: list[float]) -> dict[str, float]:
    """lm-eval's wikitext metrics from per-page NLL, with lm-eval's own per-page counts."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results

    counts = [process_results({"page": p}, [-nll]) for p, nll in zip(pages, nlls, strict=True)]
    total, words = sum(nlls), sum(c["word_perplexity"][1] for c in counts)
    n_bytes = sum(c["byte_perplexity"][1] for c in counts)
    return {"word_perplexity": math.exp(total / words), "byte_perplexity": math.exp(total / n_bytes),
            "bits_per_byte": total / n_bytes / math.log(2),
            "nll_sum": total, "words": words, "bytes": n_bytes}  # fmt: skip


# -- lm-eval ------------------------------------------------------------------------------------------


def run_lm_eval(task_manager: Any, model_dir: Path, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    import lm_eval

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # lm-eval's progress bars
        out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
                                      tasks=[task], batch_size=batch_size, device="cpu", limit=limit,
                                      task_manager=task_manager, log_samples=True, bootstrap_iters=0)  # fmt: skip
    metrics = {k.split(",")[0]: v for k, v in out["results"][task].items() if k.endswith(",none")}
    samples = sorted(out["samples"][task], key=lambda s: int(s["doc_id"]))
    return {**metrics, "samples": samples}


# -- report -------------------------------------------------------------------------------------------


def timed(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def print_metrics(rows: list[tuple[str, str, float, float]]) -> None:
    print(f"{'task':<10}{'metric':<17}{'ours':>16}{'lm-eval':>16}{'rel diff':>11}")
    for task, metric, ours, theirs in rows:
        print(f"{task:<10}{metric:<17}{ours:>16.8g}{theirs:>16.8g}{rel(ours, theirs):>11.1e}")


def lambada_details(model_dir: Path, ours: dict[str, Any], theirs: dict[str, Any], batch_size: int) -> None:
    """Per passage: where both sides score the same token ids the NLL and greedy match must agree."""
    from gpt2cli.bpe.tokenizer import Tokenizer
    from gpt2cli.eval.lambada import evaluate_lambada, split_last_word
    from gpt2cli.model import GPT

    model, tokenizer = GPT.load(model_dir).eval(), Tokenizer.load(model_dir)
    passages, result = ours["passages"], ours["result"]
    same, differ = [], []
    for i, (passage, sample) in enumerate(zip(passages, theirs["samples"], strict=True)):
        context, target = sample["arguments"][0]
        (same if (context, target) == split_last_word(passage) else differ).append(i)
    print(f"lambada: {len(passages)} passages; context/target strings the same on both sides: {len(same)}, "
          f"different: {len(differ)} (the last word follows a newline: lm-eval splits at the last ' ')")  # fmt: skip
    for name, idx in (("same split", same), ("different split", differ)):
        if not idx:
            continue
        sub = evaluate_lambada(model, tokenizer, [passages[i] for i in idx], batch_size=batch_size)
        theirs_nll = -sum(theirs["samples"][i]["filtered_resps"][0][0] for i in idx)
        theirs_acc = sum(bool(theirs["samples"][i]["filtered_resps"][0][1]) for i in idx)
        disagree = sum(result.per_example[i] != bool(theirs["samples"][i]["filtered_resps"][0][1]) for i in idx)
        print(f"  {name:<16} n={len(idx):<5} NLL sum ours {sub.nll_sum:.6f} lm-eval {theirs_nll:.6f} "
              f"(rel {rel(sub.nll_sum, theirs_nll):.1e}); correct ours {sub.correct} lm-eval {theirs_acc}; "
              f"per-passage greedy disagreements {disagree}")  # fmt: skip


def wikitext_details(model_dir: Path, ours: dict[str, Any], theirs: dict[str, Any], batch_size: int) -> None:
    """Per article: tokens scored (lm-eval's are its tokenizer's count of the same text) and NLL, with our
    lm-eval-style windows (the timed run) and with plain disjoint windows (the last one not aligned)."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
    from transformers import AutoTokenizer

    from gpt2cli.bpe.tokenizer import Tokenizer
    from gpt2cli.eval.lm import score_tokens
    from gpt2cli.model import GPT

    model, tokenizer = GPT.load(model_dir).eval(), Tokenizer.load(model_dir)
    hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = model.config.n_ctx
    pages, per_doc, samples = ours["pages"], ours["per_doc"], theirs["samples"]
    theirs_nll = [-s["filtered_resps"][0] for s in samples]
    theirs_tokens = [len(hf_tokenizer.encode(s["arguments"][0][0])) for s in samples]
    texts = [wikitext_detokenizer({"page": page}) for page in pages]
    plain = [score_tokens(model, [tokenizer.eot_id, *tokenizer.encode(t)], context=context, stride=context,
                          batch_size=batch_size, dtype=torch.float32) for t in texts]  # fmt: skip
    short = [i for i, (_, tokens) in enumerate(per_doc) if tokens <= context]
    same_text = sum(s["arguments"][0][0] == t for s, t in zip(samples, texts, strict=True))
    same_tokens = sum(t == u for (_, t), u in zip(per_doc, theirs_tokens, strict=True))
    print(f"wikitext: {len(pages)} articles; the same text on both sides: {same_text}, the same number of tokens "
          f"scored: {same_tokens} ({sum(theirs_tokens)} in all); at most {context} tokens: {len(short)}")  # fmt: skip
    print(f"  lm-eval's counts: {ours['words']} words (re.split on whitespace, per page), {ours['bytes']} bytes; "
          f"NLL sum ours {ours['nll_sum']:.4f}, lm-eval {sum(theirs_nll):.4f} nats")  # fmt: skip
    aligned = [rel(nll, t) for (nll, _), t in zip(per_doc, theirs_nll, strict=True)]
    disjoint = [rel(nll, t) for (nll, _), t in zip(plain, theirs_nll, strict=True)]
    print(f"  ours (last window aligned, as timed) vs lm-eval: max per-article rel diff {max(aligned):.1e}")
    print(f"  ours without aligning the last window vs lm-eval: max per-article rel diff {max(disjoint):.1e}")
    metrics = wikitext_metrics(pages, [nll for nll, _ in plain])
    print_metrics([("wikitext", f"{m} unaligned", metrics[m], theirs[m])
                   for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data directory (default: %(default)s)")
    parser.add_argument("--model", default="model", help="model artifact ref, HF directory, or 'random'")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("GPT2_HOME") or REPO / "data" / "runs"))
    parser.add_argument("--tasks", nargs="+", choices=list(LM_EVAL_TASK), default=list(LM_EVAL_TASK))
    parser.add_argument("--limit", type=int, default=1000, help="first N passages/articles per task; 0 = all")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per task and side; the best counts")
    parser.add_argument("--no-details", action="store_true", help="skip the untimed per-document comparison")
    args = parser.parse_args()
    limit = args.limit or None

    import lm_eval
    import transformers
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    files = {"lambada": args.data / "lambada" / "lambada_test.jsonl",
             "wikitext": args.data / "wikitext-2" / "raw-reconstructed" / "wiki.test.raw"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, description = prepare_model(args.model, args.home, args.data, Path(tmp) / "model")
        from gpt2cli.model import GPT

        model = GPT.load(model_dir).eval()
        print(f"python {platform.python_version()}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, lm-eval {lm_eval.__version__}, "
              f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}")  # fmt: skip
        print(f"model: {description}; {model.num_params():,} parameters, n_ctx {model.config.n_ctx}, "
              f"vocab {model.config.vocab_size}")  # fmt: skip
        print(f"float32, cpu, batch size {args.batch_size}, limit {limit or 'none'}")
        with torch.no_grad():  # warm-up: the first forward pass of a process pays for thread-pool and kernel set-up
            model(torch.zeros(args.batch_size, model.config.n_ctx, dtype=torch.long))
        del model
        task_manager, index_s = timed(lambda: TaskManager(include_path=str(TASKS_DIR), include_defaults=False))

        runners = {"lambada": ours_lambada, "wikitext": ours_wikitext}
        results: dict[str, tuple[dict[str, Any], float, dict[str, Any], float]] = {}
        runs: dict[str, list[tuple[float, float]]] = {}
        for task in args.tasks:
            runs[task] = []
            for _ in range(args.repeats):  # the sides alternate, so a burst of other work hits both alike
                ours, ours_s = timed(lambda task=task: runners[task](model_dir, files[task], limit, args.batch_size))
                theirs, theirs_s = timed(
                    lambda task=task: run_lm_eval(task_manager, model_dir, LM_EVAL_TASK[task], limit, args.batch_size)
                )
                runs[task].append((ours_s, theirs_s))
            results[task] = (ours, min(o for o, _ in runs[task]), theirs, min(t for _, t in runs[task]))

        print(f"\nwall time, seconds, best of {args.repeats} (lm-eval's task index, built once: {index_s:.2f} s, "
              "not included)")  # fmt: skip
        print(f"{'task':<10}{'docs':>6}{'ours':>10}{'lm-eval':>10}{'lm-eval/ours':>14}")
        for task, (_, ours_s, theirs, theirs_s) in results.items():
            print(f"{task:<10}{len(theirs['samples']):>6}{ours_s:>10.2f}{theirs_s:>10.2f}{theirs_s / ours_s:>14.2f}")
        for task, pairs in runs.items():  # the machine's speed drifts: each repeat's pair, run back to back
            ratios = sorted(t / o for o, t in pairs)
            each = ", ".join(f"({o:.2f}, {t:.2f})" for o, t in pairs)
            print(f"  {task} repeats (ours s, lm-eval s): {each}; lm-eval/ours per repeat: median "
                  f"{ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}")  # fmt: skip
        print()
        rows = []
        for task, (ours, _, theirs, _) in results.items():
            names = (
                ("perplexity", "acc") if task == "lambada" else ("word_perplexity", "byte_perplexity", "bits_per_byte")
            )
            rows += [(task, m, ours[m], theirs[m]) for m in names]
        print_metrics(rows)
        if args.no_details:
            return
        print()
        if "lambada" in results:
            ours, _, theirs, _ = results["lambada"]
            lambada_details(model_dir, ours, theirs, args.batch_size)
        if "wikitext" in results:
            ours, _, theirs, _ = results["wikitext"]
            wikitext_details(model_dir, ours, theirs, args.batch_size)


if __name__ == "__main__":
    main()
