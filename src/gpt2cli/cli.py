"""The ``gpt2`` command: parses options and calls the stage packages; no pipeline logic lives here."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from gpt2cli import __version__
from gpt2cli.artifacts import Artifact, Published, Store, reading, release_reads
from gpt2cli.console import human_bytes, print_json, reader_may_stop, setup_logging, stderr_console, stdout_console
from gpt2cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, Gpt2Error, Terminated, UsageError
from gpt2cli.runconfig import from_run_config, run_config_origin


class _FlagsWithoutType:
    """Flags take no value, so --help shows no value type for them (typer labels them ``<bool>``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsWithoutType, typer.core.TyperCommand):
    pass


class _Group(_FlagsWithoutType, typer.core.TyperGroup):
    pass


class _Typer(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, **{"cls": _Command, **kwargs})


app = _Typer(
    cls=_Group,
    name="gpt2",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
artifacts_app = _Typer(
    cls=_Group,
    help="List, inspect, verify and clean up artifacts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(artifacts_app, name="artifacts")
eval_app = _Typer(
    cls=_Group, help="Evaluate models the way the paper did.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(eval_app, name="eval")


def _path(value: str) -> Path:
    """A path option's value: an empty one (an unset shell variable, ``input = ""``) would mean the current
    directory, which no one asks for that way."""
    if not value:
        raise typer.BadParameter("an empty path (an unset variable?)")
    return Path(value)


HomeOption = Annotated[
    Optional[Path],
    typer.Option(
        "--home", parser=_path, help="Artifact root \\[default: $GPT2_HOME, else ./data/runs].", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even when an identical version exists.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait for another run of the same stage instead of exiting 75.")
]
CorpusOption = Annotated[
    Optional[str], typer.Option("--corpus", help="Corpus artifact to read \\[default: the current corpus].")
]
InputOption = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--input", parser=_path, help="Text, JSONL or Parquet files or folders instead of a corpus (repeatable)."
    ),
]


def _opt(help_text: str) -> Any:
    """An option whose help says its default itself (``\\[default: ...]``), so typer's own is not shown too."""
    return typer.Option(help=help_text, show_default=False)


ValFractionOption = Annotated[
    Optional[float],
    _opt(
        "Share of --input documents held out for validation, by text hash \\[default: 0.01]; a corpus keeps its "
        "own split."
    ),
]


@dataclass
class Settings:
    home: Optional[Path] = None
    json: bool = False
    verbose: bool = False


def settings(ctx: typer.Context, home: Optional[Path] = None, as_json: bool = False) -> Settings:
    """Global options given before the subcommand, overridden by the same options given after it."""
    root: Settings = ctx.find_root().obj or Settings()
    return Settings(home=home or root.home, json=as_json or root.json, verbose=root.verbose)


def store_for(ctx: typer.Context, home: Optional[Path]) -> Store:
    return Store(settings(ctx, home).home)


def _either(ctx: typer.Context, first: str, a: Any, second: str, b: Any) -> tuple[Any, Any]:
    """Parameters ``first`` and ``second`` (values ``a``, ``b``) exclude each other, but the one the run config
    gave yields to the other one typed on the command line (the run config's ``corpus = "corpus"`` must not refuse
    ``--input``); both typed, or both from the run config, stay both for the caller to refuse."""
    if a and b:
        if from_run_config(ctx, first) and not from_run_config(ctx, second):
            a = None
        elif from_run_config(ctx, second) and not from_run_config(ctx, first):
            b = None
    return a, b


def _corpus_or_inputs(
    ctx: typer.Context, corpus: Optional[str], inputs: Optional[list[Path]]
) -> tuple[Optional[str], list[Path]]:
    """--corpus and --input exclude each other (see `_either`)."""
    corpus, inputs = _either(ctx, "corpus", corpus, "inputs", inputs)
    return corpus, list(inputs or [])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpt2cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    home: HomeOption = None,
    as_json: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    run_config: Annotated[
        Optional[Path],
        typer.Option(
            "--run-config",
            parser=_path,
            envvar="GPT2_RUN_CONFIG",
            help="TOML file of a run's settings: one table per command (\\[dedupe], \\[train-bpe], "
            "\\[eval.zero-shot], ...) whose keys are option names; options given on the command line win.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Reproduce GPT-2 end to end: each stage writes a versioned artifact that the next stage reads.

    Exit codes: 0 ok, 1 failure, 2 usage error, 75 another run holds the lock (retry later).
    """
    ctx.obj = Settings(home=home, json=as_json, verbose=verbose)
    setup_logging(verbose)
    if run_config is not None:
        from gpt2cli.runconfig import default_map

        ctx.default_map = default_map(run_config, ctx.command)  # read by each command as its defaults


def report(result: Published, opts: Settings) -> None:
    """What a stage prints when it is done: the version it published or reused, and its summary."""
    artifact = result.artifact
    if opts.json:
        print_json(
            {"ref": artifact.ref, "reused": result.reused, "path": str(artifact.path), "summary": artifact.summary}
        )
        return
    from rich.table import Table

    verb = "reused" if result.reused else "published"
    table = Table("metric", "value")
    for name, value in artifact.summary.items():
        table.add_row(name, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console = stdout_console()
    console.print(f"{verb} {artifact.ref} ({artifact.path})", markup=False, soft_wrap=True)  # one line: greppable
    console.print(table)


# -- stages ------------------------------------------------------------------------------------


@app.command("scrape-reddit")
def scrape_reddit_command(
    ctx: typer.Context,
    dump: Annotated[
        Optional[list[Path]],
        typer.Option(
            parser=_path,
            help="Pushshift/Arctic Shift dump (.zst/.bz2/.xz/.gz/NDJSON), or a folder of them (its RS_* files); "
            "repeatable.",
        ),
    ] = None,
    subreddit: Annotated[
        Optional[list[str]], typer.Option(help="Pull a subreddit listing from the Reddit API; repeatable.")
    ] = None,
    urls: Annotated[
        Optional[list[Path]], typer.Option(parser=_path, help="A file of URLs, one per line; repeatable.")
    ] = None,
    replay: Annotated[
        Optional[list[Path]],
        typer.Option(parser=_path, help="Take pages from this WARC instead of the network; repeatable."),
    ] = None,
    sort: Annotated[str, typer.Option(help="API listing: top or new.")] = "top",
    time_filter: Annotated[str, typer.Option(help="API `top` time filter: hour, day, week, month, year, all.")] = "all",
    limit: Annotated[Optional[int], typer.Option(help="API: at most this many submissions per subreddit.")] = None,
    min_score: Annotated[
        int, typer.Option(help="Karma threshold, summed over submissions of one URL (WebText: 3).")
    ] = 3,
    keep_self: Annotated[bool, typer.Option("--keep-self", help="Keep self posts.")] = False,
    keep_nsfw: Annotated[bool, typer.Option("--keep-nsfw", help="Keep over_18 submissions.")] = False,
    block_subreddit: Annotated[
        Optional[list[str]], typer.Option(help="Add to the subreddit blocklist; repeatable.")
    ] = None,
    block_domain: Annotated[Optional[list[str]], typer.Option(help="Add to the domain blocklist; repeatable.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only submissions from this UTC day on (YYYY-MM-DD).")] = None,
    until: Annotated[
        Optional[str], typer.Option(help="Only submissions up to this UTC day (WebText: 2017-12-31).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Connections at once.")] = 32,
    per_host_interval: Annotated[float, typer.Option(help="Seconds between requests to one host.")] = 1.0,
    user_agent: Annotated[Optional[str], typer.Option(help="User-Agent for the API and the crawl.")] = None,
    allow_private_network: Annotated[
        bool, typer.Option("--allow-private-network", help="Allow private/loopback addresses (tests).")
    ] = False,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Collect WebText-style links from Reddit, fetch the pages politely, extract their main text; writes `raw-docs`."""
    from gpt2cli.scrape.stage import scrape_reddit

    opts = settings(ctx, home, as_json)
    sources, filters, fetch = _scrape_settings(ctx.params)
    result = scrape_reddit(Store(opts.home), sources=sources, filters=filters, fetch=fetch, force=force, wait=wait)
    report(result, opts)


def _scrape_settings(p: dict[str, Any]) -> tuple[Any, Any, Any]:
    """scrape-reddit's options (by parameter name) as the stage's LinkSources, LinkFilters and FetchConfig."""
    from gpt2cli.scrape.fetch import FetchConfig
    from gpt2cli.scrape.filters import LinkFilters, parse_day
    from gpt2cli.scrape.stage import LinkSources

    defaults = LinkFilters()
    agent = {"user_agent": p["user_agent"]} if p["user_agent"] else {}
    filters = LinkFilters(
        min_score=p["min_score"],
        drop_self=not p["keep_self"],
        drop_over_18=not p["keep_nsfw"],
        subreddit_blocklist=defaults.subreddit_blocklist | {s.lower() for s in p["block_subreddit"] or ()},
        domain_blocklist=defaults.domain_blocklist | {d.lower() for d in p["block_domain"] or ()},
        since=parse_day(p["since"]) if p["since"] else None,
        until=parse_day(p["until"]) if p["until"] else None,
    )
    sources = LinkSources(
        dumps=tuple(p["dump"] or ()),
        subreddits=tuple(p["subreddit"] or ()),
        url_files=tuple(p["urls"] or ()),
        replays=tuple(p["replay"] or ()),
        api_sort=p["sort"],
        api_time_filter=p["time_filter"],
        api_limit=p["limit"],
        **agent,
    )
    fetch = FetchConfig(
        concurrency=p["concurrency"],
        per_host_interval_s=p["per_host_interval"],
        allow_private_network=p["allow_private_network"],
        **agent,
    )
    return sources, filters, fetch


@app.command("dedupe")
def dedupe_command(
    ctx: typer.Context,
    raw_docs: Annotated[
        Optional[list[str]], typer.Option(help="raw-docs artifacts to read \\[default: the current one]; repeatable.")
    ] = None,
    inputs: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--input",
            parser=_path,
            help="Text files (one document each), JSONL or Parquet with a text field (and url, score), or folders "
            "of those, instead (repeatable).",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Near-duplicate Jaccard of word 5-gram sets (OpenWebText: 0.5).")
    ] = 0.5,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.")] = 128,
    lsh_recall: Annotated[
        float,
        typer.Option(help="Chance that a pair at exactly --threshold is checked; sets the LSH bands and rows."),
    ] = 0.99,
    val_fraction: Annotated[float, typer.Option(help="Held-out share, by hash of the URL (the paper: 5%).")] = 0.05,
    keep_wikipedia: Annotated[
        bool, typer.Option("--keep-wikipedia", help="Do not remove Wikipedia and its mirrors.")
    ] = False,
    language: Annotated[str, typer.Option(help="Keep documents in this language; 'any' turns the filter off.")] = "en",
    min_words: Annotated[int, typer.Option(help="Drop documents shorter than this (OpenWebText: 128 tokens).")] = 100,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Add to the current corpus without recomputing it (recomputed from every input when the settings "
            "changed, or with --force).",
        ),
    ] = False,
    overlap: Annotated[
        Optional[list[Path]],
        typer.Option(
            parser=_path, help="Report the 8-gram overlap of these eval files with the corpus (paper section 4)."
        ),
    ] = None,
    drop_overlap: Annotated[
        Optional[float],
        typer.Option(help="Drop documents sharing more than this share of their 8-grams with the --overlap files."),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Processes for the per-document steps \\[default: all cores].", show_default=False)
    ] = 0,
    shards: Annotated[
        int, typer.Option(help="Split the per-document work into this many shards (run each with --shard-index).")
    ] = 1,
    shard_index: Annotated[
        Optional[int], typer.Option(help="Screen only this shard into a dedupe-shard artifact (0-based).")
    ] = None,
    merge: Annotated[
        Optional[list[str]],
        typer.Option(help="Join dedupe-shard artifacts (refs or copied directories) into the corpus; repeatable."),
    ] = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Clean and deduplicate raw documents into a `corpus` (Parquet with a train/val split) and a report.

    At scale, run `--shards N --shard-index i` for each i (any processes or machines), then `--merge` the N
    dedupe-shard artifacts with the same options: the corpus equals a single run's."""
    from gpt2cli.dedupe.screen import Shard
    from gpt2cli.dedupe.stage import dedupe, overlap_table

    opts = settings(ctx, home, as_json)
    config = _dedupe_config(ctx.params)
    store = Store(opts.home)
    raw_docs, inputs = _either(ctx, "raw_docs", raw_docs, "inputs", inputs)
    if raw_docs and inputs:  # the stage would read only the --input files
        raise UsageError("give --raw-docs or --input, not both")
    if shard_index is None and shards != 1:
        raise UsageError("--shards needs --shard-index (then --merge the shards)")
    shard = Shard(shard_index, shards) if shard_index is not None else None
    result = dedupe(store, raw_refs=raw_docs or [], inputs=inputs or [], config=config, incremental=incremental,
                    eval_files=overlap or [], shard=shard, merge=merge or [], force=force, wait=wait)  # fmt: skip
    rows = overlap_table(result.artifact, overlap) if overlap and shard is None else None
    if rows is not None and opts.json:  # one JSON document: the stage's result with the overlap in it
        artifact = result.artifact
        print_json({"ref": artifact.ref, "reused": result.reused, "path": str(artifact.path),
                    "summary": artifact.summary, "overlap": rows})  # fmt: skip
        return
    report(result, opts)
    if rows is not None:
        from rich.table import Table

        table = Table("eval file", "8-grams", "found in corpus", "percent", title=f"overlap with {result.artifact.ref}")
        for r in rows:
            table.add_row(r["file"], f"{r['ngrams']:,}", f"{r['found']:,}", f"{r['percent']:.2f}%")
        stdout_console().print(table)


def _dedupe_config(p: dict[str, Any]) -> Any:
    """dedupe's options (by parameter name) as the stage's DedupeConfig."""
    from dataclasses import replace

    from gpt2cli.dedupe.config import DedupeConfig
    from gpt2cli.dedupe.filters import QualityConfig

    return DedupeConfig(
        near_threshold=p["threshold"],
        num_perm=p["num_perm"],
        lsh_recall=p["lsh_recall"],
        val_fraction=p["val_fraction"],
        remove_wikipedia=not p["keep_wikipedia"],
        language=None if p["language"] == "any" else p["language"],
        quality=replace(QualityConfig(), min_words=p["min_words"]),
        bloom=bool(p["overlap"]),
        drop_overlap=p["drop_overlap"],
        workers=p["workers"],
    )


@app.command("train-bpe")
def train_bpe_command(
    ctx: typer.Context,
    corpus: CorpusOption = None,
    inputs: InputOption = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, <|endoftext|> included (GPT-2: 50257).")] = 50257,
    min_frequency: Annotated[int, typer.Option(help="Stop merging when no pair occurs this often.")] = 2,
    val_fraction: ValFractionOption = None,
    workers: Annotated[int, _opt("Processes counting pre-tokens \\[default: all cores].")] = 0,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Learn GPT-2 byte-level BPE merges from a corpus; writes a `tokenizer` artifact."""
    from gpt2cli.bpe.stage import train_bpe

    opts = settings(ctx, home, as_json)
    corpus, input_paths = _corpus_or_inputs(ctx, corpus, inputs)
    result = train_bpe(
        Store(opts.home),
        corpus=corpus,
        inputs=input_paths,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        val_fraction=val_fraction,
        workers=workers,
        force=force,
        wait=wait,
    )
    report(result, opts)


@app.command("tokenize")
def tokenize_command(
    ctx: typer.Context,
    tokenizer: Annotated[str, _opt("Tokenizer artifact \\[default: the current one].")] = "tokenizer",
    corpus: CorpusOption = None,
    inputs: InputOption = None,
    val_fraction: ValFractionOption = None,
    batch_docs: Annotated[int, typer.Option(help="Documents per batch; progress is saved after each.")] = 512,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Encode a corpus into train/val token shards; writes a `tokens` artifact (resumes after a kill)."""
    from gpt2cli.bpe.shards import tokenize_corpus

    opts = settings(ctx, home, as_json)
    corpus, input_paths = _corpus_or_inputs(ctx, corpus, inputs)
    result = tokenize_corpus(
        Store(opts.home),
        tokenizer_ref=tokenizer,
        corpus=corpus,
        inputs=input_paths,
        val_fraction=val_fraction,
        force=force,
        wait=wait,
        batch_docs=batch_docs,
    )
    report(result, opts)


@app.command("pretrain")
def pretrain_command(
    ctx: typer.Context,
    tokens: Annotated[str, _opt("Tokens artifact to train on \\[default: the current one].")] = "tokens",
    config: Annotated[
        Optional[Path],
        typer.Option(
            parser=_path,
            help="TOML file of settings (its \\[pretrain] table, or top-level keys); flags win, the run config yields.",
        ),
    ] = None,
    model_size: Annotated[
        Optional[str], _opt("tiny, mini, small, 124M, 355M, 774M, 1558M (or 117M ... 1542M) \\[default: tiny].")
    ] = None,
    n_ctx: Annotated[Optional[int], _opt("Context length of the model \\[default: the size's].")] = None,
    seq_len: Annotated[Optional[int], _opt("Tokens per training sequence \\[default: the context].")] = None,
    micro_batch: Annotated[Optional[int], _opt("Sequences per process per forward pass \\[default: 8].")] = None,
    global_batch_tokens: Annotated[
        Optional[int], _opt("Tokens per optimizer step, all processes \\[default: 8192].")
    ] = None,
    max_steps: Annotated[Optional[int], _opt("Where this run stops \\[default: 200].")] = None,
    lr_decay_steps: Annotated[Optional[int], _opt("Length of the cosine schedule \\[default: --max-steps].")] = None,
    learning_rate: Annotated[Optional[float], _opt("Peak learning rate \\[default: 6e-4].")] = None,
    min_lr: Annotated[Optional[float], _opt("Learning rate at the end of the decay \\[default: 6e-5].")] = None,
    warmup_steps: Annotated[Optional[int], _opt("Linear warmup steps \\[default: 20].")] = None,
    weight_decay: Annotated[Optional[float], _opt("AdamW weight decay on matrices \\[default: 0.1].")] = None,
    grad_clip: Annotated[Optional[float], _opt("Gradient norm clip, 0 = off \\[default: 1.0].")] = None,
    dropout: Annotated[Optional[float], _opt("Dropout \\[default: 0.0].")] = None,
    seed: Annotated[Optional[int], _opt("Seed: same seed and data, same run \\[default: 1337].")] = None,
    dtype: Annotated[Optional[str], _opt("auto, float32 or bfloat16 (autocast) \\[default: auto].")] = None,
    device: Annotated[Optional[str], _opt("auto, cpu, cuda \\[default: auto].")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    fsdp: Annotated[
        Optional[bool], typer.Option("--fsdp/--no-fsdp", help="Shard the model across processes (FSDP2).")
    ] = None,
    eval_every: Annotated[Optional[int], _opt("Validation loss and a sample every N steps \\[default: 50].")] = None,
    eval_batches: Annotated[Optional[int], _opt("Held-out micro-batches per evaluation \\[default: 8].")] = None,
    checkpoint_every: Annotated[Optional[int], _opt("Checkpoint every N steps \\[default: 50].")] = None,
    keep_checkpoints: Annotated[Optional[int], _opt("Checkpoints of the run kept on disk \\[default: 2].")] = None,
    log_every: Annotated[Optional[int], _opt("Log a line every N steps \\[default: 10].")] = None,
    sample_tokens: Annotated[Optional[int], _opt("Tokens sampled at each evaluation \\[default: 48].")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Require a checkpoint of this run to continue from.")
    ] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and train from step 0.")] = False,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train GPT-2 on a tokens artifact; writes a `model` artifact. Continues a killed run by default.

    Many processes: `torchrun --nproc_per_node=K -m gpt2cli pretrain ...` (DDP; NCCL on GPUs, gloo on CPUs).
    """
    from gpt2cli.train.config import config_tokens, load_config
    from gpt2cli.train.loop import pretrain

    if resume and restart:
        raise typer.BadParameter("--resume and --restart exclude each other")
    opts = settings(ctx, home, as_json)
    flags = dict(locals())
    # the run config's [pretrain] table arrives as option defaults, but ranks below an explicit --config file
    run_config = {k for k in _PRETRAIN_FLAGS if from_run_config(ctx, k)}
    commands = set(ctx.find_root().command.commands)  # type: ignore[attr-defined]
    cfg = load_config(
        config,
        {k: flags[k] for k in _PRETRAIN_FLAGS if k not in run_config},
        defaults={k: flags[k] for k in run_config},
        commands=commands,
    )
    if getattr(ctx.get_parameter_source("tokens"), "name", "") != "COMMANDLINE":  # --config ranks above the rest
        tokens = config_tokens(config, commands) or tokens
    mode = "require" if resume else "never" if restart else "auto"
    result = pretrain(Store(opts.home), tokens_ref=tokens, cfg=cfg, resume=mode, force=force, wait=wait)
    if result is not None:
        report(result, opts)


_PRETRAIN_FLAGS = [
    "model_size", "n_ctx", "seq_len", "micro_batch", "global_batch_tokens", "max_steps", "lr_decay_steps",
    "learning_rate", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "dropout", "seed", "dtype", "device",
    "compile", "fsdp", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every",
    "sample_tokens",
]  # fmt: skip


def _check_scrape(p: dict[str, Any]) -> None:
    sources, _, fetch = _scrape_settings(p)
    sources.validate()
    fetch.validate()


def _check_tokenize(p: dict[str, Any]) -> None:
    from gpt2cli.bpe.shards import check_tokenize_options
    from gpt2cli.documents import check_document_options

    check_tokenize_options(p["batch_docs"], p["val_fraction"])
    check_document_options(p["corpus"], p["inputs"], p["val_fraction"])


# what each stage of `gpt2 refresh` checks of its settings as it starts, run on them before the first stage, so a
# bad value in the run config's third table does not wait for a crawl to finish
STAGE_CHECKS = {
    "scrape-reddit": _check_scrape,
    "dedupe": lambda p: _dedupe_config(p).validate(),
    "tokenize": _check_tokenize,
}


@app.command("refresh")
def refresh_command(
    ctx: typer.Context,
    log_file: Annotated[
        Optional[Path], typer.Option(parser=_path, help="Log file, rotated by size \\[default: HOME/logs/refresh.log].")
    ] = None,
    log_max_mb: Annotated[int, typer.Option(min=1, help="Rotate the log file at this size.")] = 10,
    log_backups: Annotated[int, typer.Option(min=0, help="Rotated log files to keep.")] = 5,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for a running refresh instead of exiting 75.")] = False,
    keep: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Then delete all but the newest KEEP versions of each kind (`artifacts gc`) \\[default: keep all].",
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The cron job: scrape new links (only URLs not fetched before), dedupe them into a new corpus version
    incrementally, and re-tokenize, with the run config's settings. Exit 75 when another refresh (or a stage
    it needs) is running; a killed refresh leaves the last good versions and the next one completes the work."""
    from gpt2cli.errors import LockHeld
    from gpt2cli.refresh import log_to_file, refresh

    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    log_to_file(log_file or store.home / "logs" / "refresh.log", log_max_mb << 20, log_backups)
    error = None
    try:
        status, results, error = refresh(store, ctx.find_root().default_map, wait=wait, keep=keep, checks=STAGE_CHECKS)
    except LockHeld as e:  # not an error: a warning line, in the log and on stderr
        logging.getLogger("gpt2cli.refresh").warning("%s", e)
        status, results = e.exit_code, []
    except Terminated as e:  # before or between stages: the refresh log says so
        status, results = e.exit_code, []
    if opts.json:
        print_json({"status": status, "stages": results})
    if error:  # in the log already; on stderr also as the one line every failing command ends with
        _fail(f"error: {error}", status)
    raise typer.Exit(status)


@app.command("report")
def report_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Model artifact \\[default: the current one].", show_default=False)
    ] = "model",
    prompt: Annotated[str, typer.Option(help="Prompt of the samples.")] = "The city council",
    num_samples: Annotated[int, typer.Option(help="Samples to show.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per sample.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the samples.")] = 1,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """One summary of a run: artifact versions and lineage, the validation-loss curve, whether the model
    learned (loss vs the unigram entropy of its tokens), the evaluation beside the paper, and samples."""
    from gpt2cli.sample import SampleOptions, Sampler, prompt_text
    from gpt2cli.summary import ascii_plot, list_versions, loss_curve, run_summary

    opts = settings(ctx, home, as_json)
    prompt = prompt_text(prompt, "--prompt")
    store = Store(opts.home)
    summary = run_summary(store, model)
    sampler = Sampler(summary["model"], store, SampleOptions(max_new_tokens=max_new_tokens, top_k=40,
                                                              num_samples=num_samples, seed=seed))  # fmt: skip
    summary["samples"] = [s.as_dict() for s in sampler.generate(prompt)]
    summary["versions"] = list_versions(store)
    if opts.json:
        print_json(summary)
        return
    from rich.table import Table

    console = stdout_console()
    versions = Table("kind", "current", "created", title="artifacts", title_justify="left")
    for row in summary["versions"]:
        versions.add_row(row["kind"], row["ref"], row["created_at"] or "")
    console.print(versions)
    console.print(_lineage_tree(summary["lineage"]))
    curve, name, note = summary["val_loss_curve"], "validation loss", ""
    if not curve:  # trained without validation: the training loss, said so
        curve, name = loss_curve(store.resolve(summary["model"]), "loss"), "training loss"
        note = " (no validation loss was computed)"
    console.print(f"\n[bold]{name}[/bold] (nats/token) by step{note}; plot: {summary['loss_png']}")
    console.print("\n".join(ascii_plot(curve)), markup=False, highlight=False)
    console.print(f"\n[bold]learning:[/bold] {summary['learning'].get('statement', 'no validation loss recorded')}")
    if summary["eval"] is not None:
        table = Table("metric", "ours", "paper (same size)", title=summary["eval"], title_justify="left")
        for row in summary["eval_rows"]:
            table.add_row(*row)
        console.print(table)
    for k, sample in enumerate(summary["samples"], 1):
        console.print(f"\n[bold]sample {k}[/bold] (top-k 40, seed {seed}): {sample['prompt']}", highlight=False)
        console.print(sample["text"], markup=False, highlight=False)


@app.command("sample")
def sample_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Model artifact reference, or a Hugging Face GPT-2 directory.")
    ] = "model",
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text; empty = unconditional.")] = None,
    prompt_file: Annotated[
        Optional[Path], typer.Option(parser=_path, help="Read the prompt from a UTF-8 file.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 means greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (the paper: 40); 0 = off.")] = 40,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: keep the smallest set of mass p.")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always the most likely token.")] = False,
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-n", help="Samples, generated as one batch (at most 1,024).")
    ] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Same seed and options, same text.")] = None,
    stop: Annotated[
        Optional[list[str]],
        typer.Option(help="Stop at this string (repeatable); \\n, \\t and \\\\ mean newline, tab and backslash."),
    ] = None,
    ignore_eot: Annotated[bool, typer.Option("--ignore-eot", help="Keep going past <|endoftext|>.")] = False,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive", "-i", help="Read prompt after prompt (after --prompt or --prompt-file, if given)."
        ),
    ] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate text from a model: top-k 40 by default, as the paper's samples; streams on a terminal."""
    from gpt2cli.sample import SampleOptions, Sampler, prompt_text, read_prompt, stop_string

    opts = settings(ctx, home, as_json)
    options = SampleOptions(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if greedy else temperature,
        top_k=top_k or None,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        stop=tuple(stop_string(s) for s in stop or ()),
        stop_at_eot=not ignore_eot,
        dtype=dtype,
        device=device,
        compile=compile,
    )
    options.validate()
    first = read_prompt(prompt, prompt_file) if not interactive or prompt is not None or prompt_file else None
    sampler = Sampler(model, Store(opts.home), options)
    out = stdout_console()
    stream = out.is_terminal and not opts.json and num_samples == 1

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    @reader_may_stop()
    def run(text: str) -> None:
        if stream:
            show(text)  # the prompt, then the continuation as it comes: what a pipe gets, only sooner
        samples = sampler.generate(text, on_text=show if stream else None)
        for i, sample in enumerate(samples):
            if opts.json:
                sys.stdout.write(json.dumps(sample.as_dict(), ensure_ascii=False) + "\n")
            elif stream:
                sys.stdout.write("\n")
            else:
                if num_samples > 1:  # as wide as the terminal; in a file, as wide as a line of text
                    from rich.rule import Rule

                    out.print(Rule(f"sample {i + 1}"), width=None if out.is_terminal else 80)
                sys.stdout.write(text + sample.text + "\n")
        sys.stdout.flush()

    if first is not None:
        run(first)
    if not interactive:
        return
    rejected = 0
    for number in itertools.count(1):
        if sys.stdin.isatty():  # on the terminal, never in the samples (stdout may be a file)
            stderr_console().print("> ", end="", markup=False, highlight=False)
        # bytes, not input(): a line ended by Ctrl-D keeps its last character, "\r\n" ends a line, and bytes that
        # are not UTF-8 reach prompt_text, which names them
        line = sys.stdin.buffer.readline()
        if not line:
            break
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        try:
            text = prompt_text(line, f"input line {number}")
        except UsageError as e:  # reported, and the next line is read: one bad line need not end a session
            stderr_console().print(f"gpt2: error: {e}", markup=False, highlight=False, soft_wrap=True)
            rejected += 1
            continue
        run(text)
    if rejected:
        raise typer.Exit(UsageError.exit_code)


@eval_app.command(
    "zero-shot",
    # one line per paragraph: Rich keeps a later paragraph's line breaks, which then fall mid-sentence
    help="The paper's zero-shot tasks (section 3): language modelling per canonical unit after the datasets' "
    "de-tokenizers (WikiText-2 and -103, PTB, 1BW, enwik8, text8, a corpus's held-out WebText), LAMBADA, CBT-CN "
    "and -NE, Winograd (WSC273), CoQA, CNN/Daily Mail, WMT-14 en-fr and fr-en, and Natural Questions; writes an "
    "`eval` artifact.\n\n"
    "Each task reads its original file under --data-dir; --source hub (or auto, when the file is missing) loads the "
    "task's pinned Hugging Face split through `datasets` instead and writes it as that file under "
    "$GPT2_HOME/.cache/eval-data, so the scores are the same either way. metrics.json records each task's data: "
    "local path and sha256, or hub dataset, config, split and revision.\n\n"
    "--overlap-with corpus@vN adds, per task, the share of its 8-grams found in the corpus (the paper's Table 6).",
)
def eval_zero_shot_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Model artifact reference, or a Hugging Face GPT-2 directory.")
    ] = "model",
    tasks: Annotated[
        Optional[list[str]],
        typer.Option(
            "--task",
            help="Task to run (repeatable) \\[default: all with local data; with --source hub, all with a hub split].",
        ),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(parser=_path, help="Folder of the datasets \\[default: $GPT2_EVAL_DATA, else ../shared/data]."),
    ] = None,
    corpus: Annotated[
        Optional[str],
        typer.Option(help="Corpus whose held-out split is the webtext task \\[default: the current one]."),
    ] = None,
    stride: Annotated[
        Optional[int], typer.Option(help="Sliding-window stride in tokens \\[default: half the context].")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows or examples per forward pass.")] = 8,
    limit: Annotated[
        Optional[int],
        typer.Option(
            help="Only the start of each task, for quick runs: its first N lines (wikitext2, wikitext103, ptb, 1bw), "
            "N thousand characters (enwik8, text8), N documents (webtext) or N examples (the others) "
            "\\[default: all]."
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    source: Annotated[
        str,
        typer.Option(
            help="Where task data comes from: auto (the file under --data-dir when found, else the Hugging Face "
            "hub), local (never the hub) or hub (always; the pinned split, written as the same file)."
        ),
    ] = "auto",
    overlap_with: Annotated[
        Optional[str],
        typer.Option(
            help="Corpus (corpus@vN) whose 8-gram Bloom filter gives each task's overlap_8gram_percent; "
            "it must have been built with `gpt2 dedupe --overlap FILE`."
        ),
    ] = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The options, as EvalOptions, to the stage (gpt2cli.eval.stage); its help is the decorator's."""
    from gpt2cli.eval.stage import EvalOptions, comparison_rows, zero_shot

    opts = settings(ctx, home, as_json)
    options = EvalOptions(tasks=tuple(tasks or ()), data_dir=data_dir, corpus=corpus, stride=stride,
                          batch_size=batch_size, limit=limit, device=device, dtype=dtype, source=source,
                          overlap_with=overlap_with)  # fmt: skip
    result = zero_shot(Store(opts.home), model_ref=model, options=options, force=force, wait=wait)
    if opts.json:
        report(result, opts)
        return
    from rich.table import Table

    table = Table("metric", "ours", "paper (same size)", title=f"{result.artifact.ref}", title_justify="left")
    for row in comparison_rows(result.artifact):
        table.add_row(*row)
    stdout_console().print(table)


@app.command("export")
def export_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model artifact: KIND@vN, model, or a directory.")] = "model",
    format: Annotated[str, typer.Option("--format", help="Output format; hf = Hugging Face transformers.")] = "hf",
    out: Annotated[Path, typer.Option("--out", parser=_path, help="Directory to write.")] = Path("export"),
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a model artifact in a format other tools load (GPT2LMHeadModel / AutoTokenizer.from_pretrained)."""
    from gpt2cli.export import export_hf

    if format != "hf":
        raise typer.BadParameter(f"unknown format {format!r}; supported: hf", param_hint="--format")
    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    artifact = store.resolve(model, "model", option="export")
    path = export_hf(artifact, out, overwrite=force, home=store.home)
    if opts.json:
        print_json({"ref": artifact.ref, "format": format, "path": str(path)})
    else:
        stdout_console().print(f"exported {artifact.ref} to {path} ({format})")


# -- gpt2 artifacts ----------------------------------------------------------------------------


def _row(artifact: Artifact) -> dict[str, Any]:
    return {
        "ref": artifact.ref,
        "kind": artifact.kind,
        "version": artifact.version,
        "bytes": artifact.size_bytes,
        "created_at": artifact.manifest.get("created_at"),
        "parents": [i["ref"] for i in artifact.inputs if "ref" in i]
        + ([f"{artifact.parent['ref']} (previous)"] if artifact.parent else []),
        "input_files": sum(1 for i in artifact.inputs if "path" in i),
        "path": str(artifact.path),
    }


@artifacts_app.command("ls")
def artifacts_ls(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Argument(help="Only this kind.")] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List artifacts: kind, version (which one a bare KIND means: current), size, creation time and parents."""
    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    if kind:
        if "@" in kind or "/" in kind:
            raise UsageError(f"`artifacts ls` takes a kind, not {kind!r} (see `gpt2 artifacts show`)")
        if kind not in store.kinds():
            store.resolve(kind)  # an error naming the kinds there
    current = {a.ref for k in ([kind] if kind else store.kinds()) if (a := store.current(k)) is not None}
    rows = [{**_row(a), "current": a.ref in current} for a in (store.versions(kind) if kind else store.all())]
    if opts.json:
        print_json(rows)
        return
    if not rows:
        stderr_console().print(f"no artifacts in {store.home}")
        return
    from rich.table import Table

    table = Table("kind", "version", "size", "created (UTC)", "parents", title=str(store.home))
    for r in rows:
        files = [f"{r['input_files']} files"] if r["input_files"] else []
        parents = ", ".join([*r["parents"], *files])
        version = f"{r['version']} (current)" if r["current"] else r["version"]
        table.add_row(r["kind"], version, human_bytes(r["bytes"]), r["created_at"], parents)
    stdout_console().print(table)


@artifacts_app.command("show")
def artifacts_show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="KIND, KIND@vN or a directory.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print an artifact's manifest."""
    opts = settings(ctx, home, as_json)
    artifact = Store(opts.home).resolve(ref)
    if opts.json:
        print_json(artifact.manifest)
        return
    from rich.table import Table

    m = artifact.manifest
    out = stdout_console()
    out.print(f"[bold]{artifact.ref}[/bold]  {artifact.path}")
    out.print(f"created {m.get('created_at')} by gpt2cli {m.get('gpt2cli_version')}")
    out.print(f"command: {m.get('command')}")
    for title, mapping in (("parameters", artifact.params), ("summary", artifact.summary)):
        if mapping:
            table = Table("name", "value", title=title, title_justify="left")
            for name, value in mapping.items():
                table.add_row(name, str(value))
            out.print(table)
    if artifact.inputs:
        table = Table("input", "sha256", title="inputs", title_justify="left")
        for i in artifact.inputs:
            table.add_row(i.get("ref") or i["path"], (i.get("manifest_sha256") or i["sha256"])[:16])
        out.print(table)
    table = Table("file", "size", "sha256", title="files", title_justify="left")
    for f in m["files"]:
        table.add_row(f["path"], human_bytes(f["bytes"]), f["sha256"][:16])
    out.print(table)


@artifacts_app.command("lineage")
def artifacts_lineage(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="KIND, KIND@vN or a directory.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the tree of inputs an artifact was built from, back to the raw data."""
    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    tree = store.lineage(store.resolve(ref))
    if opts.json:
        print_json(tree)
        return
    stdout_console().print(_lineage_tree(tree))


def _lineage_tree(tree: dict[str, Any]) -> Any:
    """A rich Tree of an artifact's inputs, back to the raw files (a few files shown per node)."""
    from rich.tree import Tree

    def label(node: dict[str, Any]) -> str:
        if "file" in node:
            return f"{node['file']}  ({human_bytes(node['bytes'])}, sha256 {node['sha256'][:12]})"
        status = f"  [red]{node['status']}[/red]" if "status" in node else ""
        gone = ", removed" if node.get("parent_status") else ""
        parent = f"  (continues {node['parent']}{gone})" if node.get("parent") else ""
        retained = "  (documents of earlier runs)" if node.get("retained") else ""
        return f"[bold]{node['ref']}[/bold]{retained}{parent}{status}"

    def grow(branch: Tree, node: dict[str, Any], shown_files: int = 3) -> None:
        children = node.get("inputs", [])
        files = [c for c in children if "file" in c]
        for child in [c for c in children if "file" not in c] + files[:shown_files]:
            grow(branch.add(label(child)), child)
        if len(files) > shown_files:
            rest = files[shown_files:]
            branch.add(
                f"... and {len(rest)} more files ({human_bytes(sum(f['bytes'] for f in rest))}; --json lists all)"
            )

    root = Tree(label(tree))
    grow(root, tree)
    return root


@artifacts_app.command("verify")
def artifacts_verify(
    ctx: typer.Context,
    ref: Annotated[
        Optional[str],
        typer.Argument(help="KIND, KIND@vN or a directory \\[default: every version].", show_default=False),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every file's checksum; exit 1 naming each changed, truncated or missing file, and each
    version whose manifest is damaged, or when the home holds no version."""
    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    if ref:
        results = [_verified(store, store.locate(ref))]
    else:  # each held while it is checked: a gc beside this one leaves it alone, or deleted it (then it is no result)
        results = []
        for path in (p for kind in store.kinds() for p in store.version_dirs(kind)):
            with reading(path) as there:
                if there:
                    results.append(_verified(store, path))
    edited = _edited_manifests(store, {r["ref"]: r["manifest_sha256"] for r in results if r["manifest_sha256"]})
    for result in results:
        result["problems"] += edited.get(result["ref"], [])
        result["ok"] = not result["problems"]
        del result["manifest_sha256"]
    if opts.json:
        print_json(results[0] if ref else results)
    if not results:  # a mistyped home must not pass as a clean one
        raise Gpt2Error(f"no artifacts in {store.home}: nothing to verify")
    for result in results:
        if not result["problems"] and not opts.json:
            stdout_console().print(f"{result['ref']}: {result['files']} files ok")
        for line in result["problems"]:
            stderr_console().print(f"{result['ref']}: {line}", markup=False, highlight=False)
    if any(r["problems"] for r in results):
        raise typer.Exit(EXIT_FAILURE)


def _verified(store: Store, path: Path) -> dict[str, Any]:
    """One version's check: its own problems, or that its manifest is damaged."""
    try:
        artifact = store.open(path)
    except Gpt2Error as e:
        return {
            "ref": Artifact.placed_ref(path),
            "ok": False,
            "files": 0,
            "problems": [str(e)],
            "manifest_sha256": None,
        }
    problems = artifact.verify()
    return {"ref": artifact.ref, "ok": not problems, "files": len(artifact.manifest["files"]), "problems": problems,
            "manifest_sha256": artifact.manifest_sha256}  # fmt: skip


def _edited_manifests(store: Store, verified: dict[str, str]) -> dict[str, list[str]]:
    """Per verified ref (ref -> its manifest's sha256 now), a problem for each version of this home built from
    it that recorded another sha256: its manifest.json was edited since (which its own check cannot see)."""
    problems: dict[str, list[str]] = {}
    for kind in store.kinds():
        for path in store.version_dirs(kind):
            try:
                user = store.open(path)
            except Gpt2Error:
                continue  # damaged or gone: its own check says so
            for entry in [*(user.manifest.get("inputs") or []), user.manifest.get("parent") or {}]:
                now = None if "home" in entry else verified.get(entry.get("ref", ""))
                if now is not None and entry.get("manifest_sha256") not in (None, now):
                    problems.setdefault(entry["ref"], []).append(
                        f"manifest.json changed since {user.ref} was built from it"
                    )
    return problems


@artifacts_app.command("gc")
def artifacts_gc(
    ctx: typer.Context,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Versions to keep per kind.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for running stages instead of exiting 75.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old versions, except the newest KEEP of each kind and anything a kept version was built from; then
    the training runs (checkpoints, metrics) of models that are gone, unless unfinished or training."""
    from gpt2cli.train.runs import collect_runs

    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    collected = store.gc(keep, dry_run=dry_run, wait=wait)
    removed = collected.removed
    runs = collect_runs(store, removed, dry_run=dry_run)
    if opts.json:
        print_json(
            {
                "dry_run": dry_run,
                "removed": [_row(a) for a in removed],
                "in_use": [_row(a) for a in collected.in_use],
                "damaged": [{"ref": ref, "problem": problem} for ref, problem in collected.damaged.items()],
                "leftover_bytes": collected.leftover_bytes,
                "runs": {"removed": [r.row() for r in runs.removed], "kept": [r.row() for r in runs.kept]},
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    out = stdout_console()
    for artifact in removed:
        out.print(f"{verb} {artifact.ref} ({human_bytes(artifact.size_bytes)})")
    for artifact in collected.in_use:
        out.print(f"kept {artifact.ref}: a running stage reads it")
    for run in runs.removed:
        out.print(f"{verb} training run {run.id} ({human_bytes(run.bytes)})", markup=False, soft_wrap=True)
    for run in runs.reported:
        out.print(run.describe(human_bytes(run.bytes)), markup=False, soft_wrap=True)
    freed = human_bytes(sum(a.size_bytes for a in removed))
    line = f"{verb} {len(removed)} versions, {freed}"
    if collected.leftover_bytes:
        line += f"; what interrupted gc runs left, {human_bytes(collected.leftover_bytes)}"
    if runs.removed:
        line += f"; {len(runs.removed)} training runs, {human_bytes(sum(r.bytes for r in runs.removed))}"
    out.print(line)


def _fail(message: str, exit_code: int, error: BaseException | None = None) -> NoReturn:
    """One line on stderr, then exit. Under torchrun, an error rank 0 raised and shared with every process, or the
    SIGTERM or Ctrl-C each process got, is said by rank 0 alone; an error of one process (its node lacks a file) by
    that one, naming its rank."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank != "0" and world != "1":
        if getattr(error, "said_by_rank_0", False) or isinstance(error, (Terminated, KeyboardInterrupt)):
            sys.exit(exit_code)
        message = f"{message} (rank {rank})"
    message = message.replace("\r", "\\r").replace("\n", "\\n")  # one line, even for a path with a line break
    stderr_console().print(f"gpt2: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(exit_code)


def _failing_context(error: BaseException) -> Any:
    """The context of the command that raised ``error``: the innermost ``ctx`` in its traceback (click's
    ``Command.invoke(ctx)`` and every command function have one), or None."""
    found, tb = None, error.__traceback__
    while tb is not None:
        ctx = tb.tb_frame.f_locals.get("ctx")
        if hasattr(ctx, "get_parameter_source") and hasattr(ctx, "command"):
            found = ctx
        tb = tb.tb_next
    return found


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script: user-facing errors become one line on stderr and an exit code."""
    try:
        code = app(args=argv, prog_name="gpt2", standalone_mode=False)
    except typer.TyperException as e:  # the parser's: a bad option value, an unknown option, a missing argument
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":
            typer.echo(ctx.get_help())
            sys.exit(e.exit_code)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = e.format_message()
        param = getattr(e, "param", None)
        if ctx is not None and param is not None and from_run_config(ctx, param.name):  # a run config's value
            message = f"invalid value in {ctx.default_map.origin(param.name)}: {e.message}"
        _fail(f"error: {' '.join(message.split())}{where}", e.exit_code)
    except Gpt2Error as e:
        where = run_config_origin(_failing_context(e), str(e)) if e.exit_code == UsageError.exit_code else ""
        _fail(f"error: {e}{where}", e.exit_code, e)
    except OSError as e:  # the machine's: a path that is not there or not writable, a full disk
        if logging.getLogger("gpt2cli").isEnabledFor(logging.DEBUG):
            raise  # -v: the traceback
        _fail(f"error: {e}", EXIT_FAILURE, e)
    except BrokenProcessPool as e:  # the machine's too: the kernel's OOM killer (or an operator) took a worker
        if logging.getLogger("gpt2cli").isEnabledFor(logging.DEBUG):
            raise
        _fail("error: a worker process died (killed, or out of memory?); nothing was published", EXIT_FAILURE, e)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", EXIT_INTERRUPTED, KeyboardInterrupt())
    finally:
        release_reads()
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130) before we see it
        _fail("interrupted", EXIT_INTERRUPTED, KeyboardInterrupt())
    if isinstance(code, int) and code:  # typer.Exit(code) from a command
        sys.exit(code)
