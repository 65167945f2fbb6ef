"""The ``gpt2`` command: parses options and calls the stage packages; no pipeline logic lives here."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpt2cli import __version__
from gpt2cli.artifacts import Artifact, Published, Store
from gpt2cli.console import human_bytes, print_json, setup_logging, stderr_console, stdout_console
from gpt2cli.errors import EXIT_FAILURE, Gpt2Error

app = typer.Typer(
    name="gpt2",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
artifacts_app = typer.Typer(
    help="List, inspect, verify and clean up artifacts.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(artifacts_app, name="artifacts")

HomeOption = Annotated[
    Optional[Path],
    typer.Option("--home", help="Artifact root \\[default: $GPT2_HOME, else ./data/runs].", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even when an identical version exists.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait for another run of the same stage instead of exiting 75.")
]
CorpusOption = Annotated[
    Optional[str], typer.Option("--corpus", help="Corpus artifact to read \\[default: the latest corpus].")
]
InputOption = Annotated[
    Optional[list[Path]],
    typer.Option("--input", help="Text, JSONL or Parquet files or folders instead of a corpus (repeatable)."),
]
ValFractionOption = Annotated[
    float,
    typer.Option(help="Share of --input documents held out for validation (by text hash; a corpus has its own split)."),
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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Reproduce GPT-2 end to end: each stage writes a versioned artifact that the next stage reads.

    Exit codes: 0 ok, 1 failure, 2 usage error, 75 another run holds the lock (retry later).
    """
    ctx.obj = Settings(home=home, json=as_json, verbose=verbose)
    setup_logging(verbose)


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
    table = Table("metric", "value", title=f"{verb} {artifact.ref}  ({artifact.path})", title_justify="left")
    for name, value in artifact.summary.items():
        table.add_row(name, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    stdout_console().print(table)


# -- stages ------------------------------------------------------------------------------------


@app.command("train-bpe")
def train_bpe_command(
    ctx: typer.Context,
    corpus: CorpusOption = None,
    inputs: InputOption = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, <|endoftext|> included (GPT-2: 50257).")] = 50257,
    min_frequency: Annotated[int, typer.Option(help="Stop merging when no pair occurs this often.")] = 2,
    val_fraction: ValFractionOption = 0.01,
    workers: Annotated[int, typer.Option(help="Processes counting pre-tokens \\[default: all cores].")] = 0,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Learn GPT-2 byte-level BPE merges from a corpus; writes a `tokenizer` artifact."""
    from gpt2cli.bpe.train import train_bpe

    opts = settings(ctx, home, as_json)
    result = train_bpe(
        Store(opts.home),
        corpus=corpus,
        inputs=inputs or [],
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
    tokenizer: Annotated[str, typer.Option(help="Tokenizer artifact \\[default: the latest].")] = "tokenizer",
    corpus: CorpusOption = None,
    inputs: InputOption = None,
    val_fraction: ValFractionOption = 0.01,
    batch_docs: Annotated[int, typer.Option(min=1, help="Documents per batch; progress is saved after each.")] = 512,
    force: ForceOption = False,
    wait: WaitOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Encode a corpus into train/val token shards; writes a `tokens` artifact (resumes after a kill)."""
    from gpt2cli.bpe.shards import tokenize_corpus

    opts = settings(ctx, home, as_json)
    result = tokenize_corpus(
        Store(opts.home),
        tokenizer_ref=tokenizer,
        corpus=corpus,
        inputs=inputs or [],
        val_fraction=val_fraction,
        force=force,
        wait=wait,
        batch_docs=batch_docs,
    )
    report(result, opts)


# -- gpt2 artifacts ----------------------------------------------------------------------------


def _row(artifact: Artifact) -> dict[str, Any]:
    return {
        "ref": artifact.ref,
        "kind": artifact.kind,
        "version": artifact.version,
        "bytes": artifact.size_bytes,
        "created_at": artifact.manifest.get("created_at"),
        "parents": [i["ref"] for i in artifact.inputs if "ref" in i],
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
    """List artifacts: kind, version, size, creation time and parents."""
    opts = settings(ctx, home, as_json)
    store = Store(opts.home)
    rows = [_row(a) for a in (store.versions(kind) if kind else store.all())]
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
        table.add_row(r["kind"], r["version"], human_bytes(r["bytes"]), r["created_at"], parents)
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
    from rich.tree import Tree

    def label(node: dict[str, Any]) -> str:
        if "file" in node:
            return f"{node['file']}  ({human_bytes(node['bytes'])}, sha256 {node['sha256'][:12]})"
        status = f"  [red]{node['status']}[/red]" if "status" in node else ""
        return f"[bold]{node['ref']}[/bold]{status}"

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
    stdout_console().print(root)


@artifacts_app.command("verify")
def artifacts_verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="KIND, KIND@vN or a directory.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every file's checksum; exit 1 naming each changed, truncated or missing file."""
    opts = settings(ctx, home, as_json)
    artifact = Store(opts.home).resolve(ref)
    problems = artifact.verify()
    if opts.json:
        print_json({"ref": artifact.ref, "ok": not problems, "problems": problems})
    elif not problems:
        stdout_console().print(f"{artifact.ref}: {len(artifact.manifest['files'])} files ok")
    if problems:
        for line in problems:
            stderr_console().print(f"{artifact.ref}: {line}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILURE)


@artifacts_app.command("gc")
def artifacts_gc(
    ctx: typer.Context,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Versions to keep per kind.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for running stages instead of exiting 75.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old versions, except the newest KEEP of each kind and anything a kept version was built from."""
    opts = settings(ctx, home, as_json)
    removed = Store(opts.home).gc(keep, dry_run=dry_run, wait=wait)
    if opts.json:
        print_json({"dry_run": dry_run, "removed": [_row(a) for a in removed]})
        return
    verb = "would delete" if dry_run else "deleted"
    for artifact in removed:
        stdout_console().print(f"{verb} {artifact.ref} ({human_bytes(artifact.size_bytes)})")
    freed = human_bytes(sum(a.size_bytes for a in removed))
    stdout_console().print(f"{verb} {len(removed)} versions, {freed}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script: user-facing errors become one line on stderr and an exit code."""
    try:
        app(args=argv, prog_name="gpt2")
    except Gpt2Error as e:
        stderr_console().print(f"gpt2: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        stderr_console().print("gpt2: interrupted", markup=False)
        sys.exit(130)
