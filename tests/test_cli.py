from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main

from gpt2cli.artifacts import Store, artifact_input
from gpt2cli.cli import app
from tests.conftest import SAMPLE, run_module
from tests.test_artifacts import SHA, rewrite_manifest, wait_for, worker, write_files


def all_command_paths() -> list[list[str]]:
    paths = []

    def walk(cmd, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.fixture
def populated(store: Store) -> Store:
    corpus = store.produce("corpus", params={"min_words": 3}, inputs=[], build=write_files(a="text")).artifact
    store.produce("tokenizer", params={"vocab_size": 300}, inputs=[artifact_input(corpus)], build=write_files(t="x"))
    return store


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "gpt2")
def test_help_for_every_command(gpt2, path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line per option
    result = gpt2(*path, "--help")
    assert result.code == 0, result.err
    assert "Usage" in result.out
    assert not [line for line in result.out.splitlines() if line.count("[default:") > 1]
    assert "--help" in result.out and "<bool>" not in result.out  # flags take no value


def test_top_level_help_lists_stages_and_artifacts(gpt2):
    out = gpt2("--help").out
    assert "artifacts" in out and "Exit codes" in out
    assert "[dedupe], [train-bpe]" in " ".join(out.split())  # not swallowed as rich markup


@pytest.mark.parametrize(
    "args",
    [
        ["scrape-reddit", "--concurrency", "0"],
        ["--bogus"],
        ["artifacts", "show"],
        ["pretrain", "--resume", "--restart"],
        ["sample", "--top-p", "abc"],
        ["artifacts", "gc", "--keep", "0"],
    ],
)
def test_parser_errors_are_one_line_with_exit_2(gpt2, args):
    result = gpt2(*args)
    assert result.code == 2
    assert result.err.startswith("gpt2: error: ") and result.err.count("\n") == 1, result.err
    assert "--help)" in result.err and not result.out


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank_0_says_a_torchrun_job_was_stopped(gpt2, monkeypatch: pytest.MonkeyPatch, rank: str, printed: bool):
    from gpt2cli.errors import Terminated
    from gpt2cli.train import loop

    def stopped(*args: object, **kwargs: object) -> None:
        raise Terminated("stopped by SIGTERM after step 7")

    monkeypatch.setattr(loop, "pretrain", stopped)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = gpt2("pretrain")
    assert result.code == 143 and ("stopped by SIGTERM" in result.err) == printed
    monkeypatch.setenv("WORLD_SIZE", "1")  # a RANK left in a lone process's environment silences nothing
    assert "stopped by SIGTERM" in gpt2("pretrain").err


def test_no_arguments_print_the_help(gpt2):
    result = gpt2("artifacts")
    assert result.code == 2 and "Usage" in result.out and "Commands" in result.out


def test_version(gpt2):
    result = gpt2("--version")
    assert result.code == 0 and re.fullmatch(r"gpt2cli \S+\n", result.out)


def test_ls_show_lineage_json(gpt2, populated):
    rows = json.loads(gpt2("artifacts", "ls", "--json").out)
    assert [r["ref"] for r in rows] == ["corpus@v1", "tokenizer@v1"]
    assert rows[1]["parents"] == ["corpus@v1"] and rows[0]["bytes"] == 4
    manifest = json.loads(gpt2("--json", "artifacts", "show", "tokenizer").out)
    assert manifest["params"] == {"vocab_size": 300} and manifest["inputs"][0]["ref"] == "corpus@v1"
    tree = json.loads(gpt2("artifacts", "lineage", "tokenizer@v1", "--json").out)
    assert tree["inputs"][0]["ref"] == "corpus@v1"
    pretty = gpt2("artifacts", "show", "corpus@v1")
    assert pretty.code == 0 and "min_words" in pretty.out and "manifest" not in pretty.err
    assert "corpus@v1" in gpt2("artifacts", "lineage", "tokenizer").out
    table = gpt2("artifacts", "ls").out
    assert "tokenizer" in table and "corpus@v1" in table


def test_home_option_overrides_env(gpt2, populated, tmp_path: Path):
    other = tmp_path / "other"
    assert json.loads(gpt2("--home", str(other), "artifacts", "ls", "--json").out) == []
    assert json.loads(gpt2("artifacts", "ls", "--home", str(other), "--json").out) == []
    assert len(json.loads(gpt2("artifacts", "ls", "--json").out)) == 2


def test_verify_exit_codes(gpt2, populated):
    assert gpt2("artifacts", "verify", "corpus").code == 0
    (populated.home / "corpus" / "v1" / "a").write_text("te")
    result = gpt2("artifacts", "verify", "corpus")
    assert result.code == 1
    assert "corpus@v1: a: truncated (2 of 4 bytes)" in result.err


def test_unknown_reference_is_a_usage_error_listing_versions(gpt2, populated):
    result = gpt2("artifacts", "show", "corpus@v7")
    assert result.code == 2
    assert result.err.strip() == f"gpt2: error: no corpus@v7 in {populated.home}; corpus versions: v1"
    missing = gpt2("artifacts", "show", "model")
    assert missing.code == 2 and "run `gpt2 pretrain`" in missing.err and "Traceback" not in missing.err


def test_bad_option_is_usage_error(gpt2):
    assert gpt2("artifacts", "gc", "--keep", "0").code == 2
    assert gpt2("no-such-stage").code == 2


def test_corrupt_manifest_is_one_line_failure(gpt2, populated):
    (populated.home / "corpus" / "v1" / "manifest.json").write_text("{")
    result = gpt2("artifacts", "verify", "corpus@v1")
    assert result.code == 1
    assert result.err.count("\n") == 1 and "manifest.json does not parse" in result.err


def test_a_damaged_version_does_not_hide_the_others(gpt2, populated):
    populated.produce("corpus", params={"i": 2}, inputs=[], build=write_files(a="2"))
    (populated.home / "corpus" / "v1" / "manifest.json").write_text("{")
    listed = gpt2("artifacts", "ls", "--json")
    assert listed.code == 0 and [r["ref"] for r in json.loads(listed.out)] == ["corpus@v2", "tokenizer@v1"]
    assert "skipping" in listed.err and "corpus/v1" in listed.err
    (populated.home / "corpus" / "v2" / "manifest.json").write_text("{")
    latest = gpt2("artifacts", "show", "corpus")  # never an older version in place of the damaged latest
    assert latest.code == 1 and "corpus/v2/manifest.json does not parse" in latest.err
    assert gpt2("artifacts", "ls", "corpus").code == 0  # listing a kind skips its damaged versions too


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("files", None),
        ("inputs", "x"),
        ("created_at", 5),
        ("parent", [1]),
        ("kind", "../x"),
        ("files", [{"path": "a", "bytes": 10**400, "sha256": SHA}]),
        ("inputs", [{"ref": "raw-docs@v1", "manifest_sha256": SHA, "path": "p"}]),
    ],
)
def test_a_manifest_with_a_field_of_the_wrong_shape_is_damaged(gpt2, populated, field: str, value: object):
    rewrite_manifest(populated.home / "corpus" / "v1", **{field: value})
    listed = gpt2("artifacts", "ls", "--json")
    assert listed.code == 0 and [r["ref"] for r in json.loads(listed.out)] == ["tokenizer@v1"]
    for args, prefix in (
        (["verify", "corpus"], "corpus@v1: manifest "),
        (["show", "corpus@v1"], "gpt2: error: manifest "),
    ):
        result = gpt2("artifacts", *args)
        assert result.code == 1 and result.err.startswith(prefix) and "is damaged" in result.err
        assert result.err.count("\n") == 1


def test_a_manifest_that_cannot_be_read_damages_its_version_alone(gpt2, populated):
    """Not the whole home: ls lists the others, verify checks them, gc collects around it and leaves it alone."""
    for i in (2, 3, 4):
        populated.produce("corpus", params={"i": i}, inputs=[], build=write_files(a=str(i)))
    manifest = populated.home / "corpus" / "v4" / "manifest.json"
    manifest.unlink()
    manifest.mkdir()  # EACCES and EIO take the same way, which root cannot test
    listed = gpt2("artifacts", "ls", "--json")
    refs = [r["ref"] for r in json.loads(listed.out)]
    assert listed.code == 0 and refs == ["corpus@v1", "corpus@v2", "corpus@v3", "tokenizer@v1"]
    assert f"skipping corpus@v4: manifest {manifest} cannot be read: Is a directory" in " ".join(listed.err.split())
    verified = gpt2("artifacts", "verify")
    assert verified.code == 1 and len(verified.out.splitlines()) == 4 and "corpus@v4: manifest" in verified.err
    collected = gpt2("artifacts", "gc", "--keep", "1", "--json")
    assert collected.code == 0, collected.err
    report = json.loads(collected.out)
    assert [r["ref"] for r in report["removed"]] == ["corpus@v2"]  # v1: the tokenizer's input; v3: the newest read
    assert [d["ref"] for d in report["damaged"]] == ["corpus@v4"] and manifest.is_dir()
    assert "gc: leaving corpus@v4 alone" in collected.err


def test_a_manifest_that_names_another_version_is_damaged(gpt2, populated):
    """Copied or edited into corpus/v1, a manifest saying tokens@v9 would be listed, kept and handed on as that."""
    rewrite_manifest(populated.home / "corpus" / "v1", kind="tokens", version="v9")
    result = gpt2("artifacts", "verify")
    assert result.code == 1 and "tokenizer@v1: 1 files ok" in result.out
    assert "corpus@v1: manifest" in result.err and "is damaged: it names tokens@v9, not corpus@v1" in result.err
    assert [r["ref"] for r in json.loads(gpt2("artifacts", "ls", "--json").out)] == ["tokenizer@v1"]
    for ref in ("corpus", str(populated.home / "corpus" / "v1")):  # by name, or by a path into the home
        assert gpt2("artifacts", "show", ref).code == 1
    copy = populated.home.parent / "copy"  # out of the home, a directory may be named anything
    shutil.copytree(populated.home / "corpus" / "v1", copy)
    assert json.loads(gpt2("artifacts", "show", str(copy), "--json").out)["version"] == "v9"


def test_verify_of_a_damaged_version_prints_json_and_of_no_version_fails(gpt2, populated, tmp_path: Path):
    (populated.home / "corpus" / "v1" / "manifest.json").write_text("{")
    result = gpt2("artifacts", "verify", "corpus", "--json")
    assert result.code == 1 and json.loads(result.out)["ok"] is False and "does not parse" in result.err
    mistyped = tmp_path / "hoem"
    for args in ([], ["--json"]):
        result = gpt2("--home", str(mistyped), "artifacts", "verify", *args)
        assert result.code == 1 and result.err == f"gpt2: error: no artifacts in {mistyped}: nothing to verify\n"
        assert result.out == ("[]\n" if args else "")
    assert not mistyped.exists()


def test_a_lineage_cycle_is_shown_not_followed(gpt2, populated):
    tokenizer = populated.resolve("tokenizer")
    rewrite_manifest(populated.home / "corpus" / "v1", inputs=[artifact_input(tokenizer)])  # by hand
    tree = gpt2("artifacts", "lineage", "tokenizer")
    assert tree.code == 0 and "tokenizer@v1  cycle" in tree.out, tree.err
    (corpus,) = json.loads(gpt2("artifacts", "lineage", "tokenizer", "--json").out)["inputs"]
    assert corpus["inputs"] == [{"ref": "tokenizer@v1", "status": "cycle", "inputs": []}]


def test_verify_without_a_reference_checks_every_version(gpt2, populated):
    assert gpt2("artifacts", "verify").out.splitlines() == ["corpus@v1: 1 files ok", "tokenizer@v1: 1 files ok"]
    (populated.home / "corpus" / "v1" / "a").write_text("changed")
    (populated.home / "tokenizer" / "v1" / "manifest.json").write_text("{")
    result = gpt2("artifacts", "verify", "--json")
    assert result.code == 1
    assert [(r["ref"], r["ok"]) for r in json.loads(result.out)] == [("corpus@v1", False), ("tokenizer@v1", False)]
    assert "tokenizer@v1: manifest" in result.err and "does not parse" in result.err


def test_verify_reports_a_manifest_edited_after_a_version_was_built_from_it(gpt2, populated):
    """A manifest lists every file but itself: the checksum a later version recorded is what can tell."""
    rewrite_manifest(populated.home / "corpus" / "v1", params={"min_words": 30})
    for args in ((), ("corpus",)):
        result = gpt2("artifacts", "verify", *args)
        assert result.code == 1
        assert result.err == "corpus@v1: manifest.json changed since tokenizer@v1 was built from it\n"


def test_verify_holds_the_versions_it_checks_against_a_gc_beside_it(gpt2, populated, monkeypatch):
    """A gc running beside the check leaves each version alone (or deleted it first), never mid-check."""
    from gpt2cli import cli

    for n in (1, 2):  # eval@v1: nothing was built from it, so a gc --keep 1 deletes it unless it is being read
        populated.produce("eval", params={"n": n}, inputs=[], build=write_files(metrics="{}"))
    verified = cli._verified

    def verify_with_a_gc_while_checking(ref: str) -> tuple[list[str], str]:
        checked, gc_out = [], []

        def check(store: Store, path: Path) -> dict:
            checked.append(f"{path.parent.name}@{path.name}")
            if checked[-1] == ref:
                gc = run_module("--home", str(store.home), "artifacts", "gc", "--keep", "1")
                assert gc.returncode == 0, gc.stderr
                gc_out.append(gc.stdout)
            return verified(store, path)

        monkeypatch.setattr(cli, "_verified", check)
        result = gpt2("artifacts", "verify")
        assert result.code == 0, result.err
        return checked, gc_out[0]

    checked, gc = verify_with_a_gc_while_checking("eval@v1")  # the version being checked stays
    assert checked == ["corpus@v1", "eval@v1", "eval@v2", "tokenizer@v1"] and "deleted 0 versions" in gc, gc
    checked, gc = verify_with_a_gc_while_checking("corpus@v1")  # one not yet reached goes, and is no problem
    assert checked == ["corpus@v1", "eval@v2", "tokenizer@v1"] and "deleted 1 versions" in gc, gc


def test_verify_of_every_version_holds_one_at_a_time(populated, tmp_path: Path):
    """A home of more versions than a process may open files (an hourly refresh without --keep) still verifies."""
    for n in range(150):
        populated.produce("eval", params={"n": n}, inputs=[], build=write_files(metrics="{}"))
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100)); "
        "from gpt2cli.cli import main; main(sys.argv[1:])"
    )
    result = subprocess.run([sys.executable, "-c", script, "--home", str(populated.home), "artifacts", "verify"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 152


def test_a_stage_reports_its_version_and_path_on_one_line(gpt2, tmp_path: Path):
    home = tmp_path / ("a-long-folder-name-" * 6) / "home"  # past 80 columns: no wrapping inside the path
    result = gpt2("--home", str(home), "train-bpe", "--input", str(SAMPLE), "--vocab-size", "300")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"published tokenizer@v1 ({home / 'tokenizer' / 'v1'})"


def test_the_refresh_logs_folder_is_no_artifact_kind(gpt2, populated):
    (populated.home / "logs").mkdir()
    assert populated.kinds() == ["corpus", "tokenizer"]
    assert gpt2("artifacts", "gc", "--keep", "1").code == 0 and not (populated.home / "logs" / ".lock").exists()


def test_a_damaged_version_counter_is_numbered_past(store: Store):
    store.produce("corpus", params={"i": 0}, inputs=[], build=write_files(a="0"))
    (store.home / "corpus" / ".last-version").write_text("v1\n")
    assert store.produce("corpus", params={"i": 1}, inputs=[], build=write_files(a="1")).artifact.ref == "corpus@v2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["artifacts", "show", "corpus@"], "bad reference 'corpus@'"),
        (["artifacts", "ls", "nosuchkind"], "no 'nosuchkind' artifact"),
        (["artifacts", "ls", "corpus@v1"], "takes a kind"),
    ],
)
def test_references_that_name_nothing_are_usage_errors(gpt2, populated, args, message):
    result = gpt2(*args)
    assert result.code == 2 and message in result.err, result.err


def test_report_of_another_kind_or_a_bad_prompt_is_a_usage_error(gpt2, populated):
    other = gpt2("report", "corpus")
    assert other.code == 2 and "corpus@v1 is a 'corpus' artifact; report needs a 'model' artifact" in other.err
    prompt = gpt2("report", "--prompt", b"caf\xe9".decode("utf-8", "surrogateescape"))
    assert prompt.code == 2 and "the prompt in --prompt is not UTF-8" in prompt.err


def test_a_home_that_is_a_file_is_a_usage_error(gpt2, tmp_path: Path):
    home = tmp_path / "file"
    home.write_text("")
    for args in (["artifacts", "ls"], ["artifacts", "gc"], ["dedupe", "--input", str(home)]):
        result = gpt2("--home", str(home), *args)
        assert result.code == 2 and result.err == f"gpt2: error: the artifact home {home} is not a directory\n"


def test_a_path_the_machine_refuses_is_one_line(gpt2, tmp_path: Path):
    (tmp_path / "a.txt").write_text("A document of a few words, enough for the length filter to keep it. " * 20)
    result = gpt2("--home", "/proc/no-such-dir", "dedupe", "--input", str(tmp_path))
    assert result.code == 1 and result.err.startswith("gpt2: error: [Errno") and result.err.count("\n") == 1
    assert "/proc/no-such-dir" in result.err


def test_gc_deletes_and_exits_75_while_a_stage_holds_the_lock(gpt2, populated, home: Path, tmp_path: Path):
    for i in range(2):
        populated.produce("corpus", params={"i": i}, inputs=[], build=write_files(a=str(i)))
    dry = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--dry-run", "--json").out)
    assert [r["ref"] for r in dry["removed"]] == ["corpus@v2"]  # v1 is an input of the kept tokenizer
    marker = tmp_path / "started"
    holder = worker(home, "--param", "z", "--files", "100", "--sleep", "0.05", "--marker", str(marker))
    try:
        wait_for(marker)
        result = gpt2("artifacts", "gc", "--keep", "1")
        assert result.code == 75
        assert f"pid {holder.pid}" in result.err
    finally:
        holder.kill()
        holder.wait()
    result = gpt2("artifacts", "gc", "--keep", "1")
    assert result.code == 0 and "deleted corpus@v2" in result.out
    assert sorted(a.ref for a in populated.all()) == ["corpus@v1", "corpus@v3", "tokenizer@v1"]


def test_gc_removes_what_a_gc_killed_while_deleting_left(gpt2, populated):
    """Only a publish of the kind swept it, and none may come (tokenizer, eval): gc frees it and says so."""
    trash = populated.home / "tokenizer" / ".trash-v1-deadbeef"  # a version renamed away, partly deleted
    (trash / "sub").mkdir(parents=True)
    (trash / "sub" / "f").write_text("12345")
    dry = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--dry-run", "--json").out)
    assert dry["removed"] == [] and dry["leftover_bytes"] == 5 and trash.exists()
    result = gpt2("artifacts", "gc", "--keep", "1")
    assert (
        result.code == 0
        and result.out.splitlines()[-1] == "deleted 0 versions, 0 B; what interrupted gc runs left, 5 B"
    )
    assert not trash.exists() and json.loads(gpt2("artifacts", "gc", "--json").out)["leftover_bytes"] == 0


def test_console_script_plain_output_is_timestamped(tmp_path: Path, populated, home: Path):
    """Under cron (no TTY) log lines carry a UTC timestamp; stdout carries only the result."""
    result = run_module("--home", str(home), "artifacts", "gc", "--keep", "1", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dry_run"] is True
    blocked = run_module("--home", str(home), "artifacts", "show", "corpus@v5")
    assert blocked.returncode == 2 and blocked.stderr.startswith("gpt2: error: no corpus@v5")


def test_log_lines_without_tty(monkeypatch, capsys):
    import logging

    from gpt2cli.console import progress, setup_logging

    monkeypatch.setattr("gpt2cli.console.PLAIN_INTERVAL_S", 0.0)
    setup_logging()
    logging.getLogger("gpt2cli.test").info("hello")
    with progress("encoding", total=4, unit="docs") as bar:
        for _ in range(4):
            time.sleep(0.001)
            bar.advance()
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO hello", err[0])
    assert re.fullmatch(r"\S+Z INFO encoding: 4/4 docs \([\d.]+ docs/s\)", err[-1])


# -- the run config, the refresh's errors, and lines in pipes ----------------------------------


def test_a_run_config_table_is_checked_by_its_own_command_only(gpt2, populated, tmp_path: Path, monkeypatch):
    """A typo in [dedupe] fails `gpt2 dedupe`, not the commands that do not read that table; a file that does not
    parse, or a table that names no command (no command would ever check it), fails every command."""
    config = tmp_path / "run.toml"
    config.write_text('[dedupe]\nbogus = 1\n\n[artifacts.gc]\nkepe = 2\n\n[sample]\nprompt = "Hi"\n')
    monkeypatch.setenv("GPT2_RUN_CONFIG", str(config))
    assert gpt2("artifacts", "ls").code == 0
    assert gpt2("artifacts", "verify").code == 0
    for args, table, key in ((["dedupe"], "dedupe", "bogus"), (["artifacts", "gc"], "artifacts.gc", "kepe")):
        result = gpt2(*args)
        assert result.code == 2 and result.err.startswith(f"gpt2: error: {config}: [{table}] has no option {key!r}")
    for text, message in (("[dedupe\n", "not valid TOML"), ("[trian-bpe]\nvocab_size = 300\n", "is not a command")):
        config.write_text(text)
        result = gpt2("artifacts", "ls")
        assert result.code == 2 and message in result.err and result.err.count("\n") == 1


def test_a_bad_run_config_value_names_the_file_table_and_key(gpt2, populated, tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_text('[scrape-reddit]\nlimit = "x"\n\n[artifacts.gc]\nkeep = 0\n')
    result = gpt2("--run-config", str(config), "scrape-reddit")
    assert result.code == 2 and result.err.count("\n") == 1
    assert result.err.startswith(f"gpt2: error: invalid value in {config} [scrape-reddit] limit: ")
    assert "'--limit'" not in result.err
    result = gpt2("--run-config", str(config), "artifacts", "gc")
    assert result.code == 2 and f"invalid value in {config} [artifacts.gc] keep: " in result.err
    assert gpt2("--run-config", str(config), "artifacts", "gc", "--keep", "2").code == 0  # typed: the table's unused
    typed = gpt2("scrape-reddit", "--limit", "x")
    assert typed.code == 2 and "Invalid value for '--limit'" in typed.err


def test_an_unknown_run_config_key_lists_the_keys_the_table_takes(gpt2, tmp_path: Path):
    """The list is what a table accepts, as users type it: long option names, not the parameters behind them
    (inputs, as_json), and not how one invocation behaves (--home, --json, --force, --wait)."""
    config = tmp_path / "run.toml"
    config.write_text("[dedupe]\nbogus = 1\n")
    result = gpt2("--run-config", str(config), "dedupe")
    assert result.code == 2
    listed = result.err.strip().split("its keys: ")[1].split(", ")
    assert listed == ["drop_overlap", "incremental", "input", "keep_wikipedia", "language", "lsh_recall", "merge",
                      "min_words", "num_perm", "overlap", "raw_docs", "shard_index", "shards", "threshold",
                      "val_fraction", "workers"]  # fmt: skip
    for key in ("inputs", "json", "as_json", "home"):  # not listed, so not taken either
        config.write_text(f"[dedupe]\n{key} = 1\n")
        assert gpt2("--run-config", str(config), "dedupe").code == 2
    config.write_text("[dedupe]\nforce = true\n")
    result = gpt2("--run-config", str(config), "dedupe")
    assert result.code == 2 and "'force' is not a run setting; give --force on the command line" in result.err
    config.write_text('[eval.zero-shot]\ntasks = ["lambada"]\n')
    result = gpt2("--run-config", str(config), "eval", "zero-shot")
    assert result.code == 2 and "has no option 'tasks'" in result.err and ", task\n" in result.err
    config.write_text("[sample]\nn = 2\n")  # a short flag is no key
    assert "has no option 'n'" in gpt2("--run-config", str(config), "sample").err


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[pretrain]\nmax_steps = true\n", "[pretrain] max_steps must be a number, got True"),
        ('[pretrain]\ncompile = "yes"\n', "[pretrain] compile must be true or false, got 'yes'"),
        ("[dedupe]\nkeep_wikipedia = 1\n", "[dedupe] keep_wikipedia must be true or false, got 1"),
        ("[pretrain]\nmax_steps = 3\nmax-steps = 4\n", "[pretrain] sets max-steps twice (as max_steps and max-steps)"),
        ("[tokenize]\ntokenizer = 3\n", "[tokenize] tokenizer must be a string, got 3"),
        ("[tokenize]\ninput = [3]\n", "[tokenize] input must be a string, got [3]"),
    ],
)
def test_run_config_values_are_taken_as_toml_typed_them(gpt2, tmp_path: Path, table: str, message: str):
    """click would read `true` as 1 and "yes" as a flag's true: a TOML file says what it means."""
    config = tmp_path / "run.toml"
    config.write_text(table)
    command = table[1:].split("]")[0]
    result = gpt2("--run-config", str(config), command)
    assert result.code == 2 and result.err == f"gpt2: error: {config}: {message}\n"


def test_a_run_configs_relative_paths_are_beside_it(gpt2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """cron starts in $HOME: `input = "docs.jsonl"` names the file next to the run config, from anywhere."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "docs.jsonl").write_text('{"text": "a few words of text"}\n' * 3)
    config = tmp_path / "run" / "run.toml"
    config.write_text('[train-bpe]\ninput = "docs.jsonl"\nvocab_size = 260\nval_fraction = 0.0\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = gpt2("--run-config", str(config), "train-bpe", "--json")
    assert result.code == 0, result.err
    assert Store().resolve(json.loads(result.out)["ref"]).inputs[0]["path"] == str(tmp_path / "run" / "docs.jsonl")


def test_a_run_config_is_utf8_with_or_without_a_byte_order_mark(gpt2, tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_bytes(b"\xef\xbb\xbf[tokenize]\nbatch_docs = 0\n")  # read: its value is checked
    assert gpt2("--run-config", str(config), "tokenize").err.startswith("gpt2: error: --batch-docs must be in 1..")
    config.write_bytes(b"[tokenize]\nbatch_docs = 5 # caf\xe9\n")
    result = gpt2("--run-config", str(config), "artifacts", "ls")
    assert (
        result.code == 2 and result.err == f"gpt2: error: {config}: not UTF-8 (byte 0xe9 at offset 31); TOML is UTF-8\n"
    )


@pytest.mark.parametrize("args", [["--home", ""], ["tokenize", "--input", ""], ["sample", "--prompt-file", ""]])
def test_an_empty_path_is_refused_not_taken_for_the_current_directory(gpt2, tmp_path: Path, args: list[str]):
    result = gpt2(*args) if args[0] != "--home" else gpt2(*args, "artifacts", "ls")
    assert result.code == 2 and "an empty path (an unset variable?)" in result.err
    config = tmp_path / "run.toml"
    config.write_text('[tokenize]\ninput = [""]\n')
    from_config = gpt2("--run-config", str(config), "tokenize")
    assert from_config.code == 2
    assert from_config.err.startswith(f"gpt2: error: invalid value in {config} [tokenize] input: an empty path")


def test_an_error_naming_a_path_with_a_line_break_is_one_line(gpt2, tmp_path: Path):
    result = gpt2("train-bpe", "--input", str(tmp_path / "no\nsuch.txt"))
    assert result.code == 2 and result.err == f"gpt2: error: input {tmp_path}/no\\nsuch.txt does not exist\n"


def test_a_json_result_with_standard_output_closed_is_one_error_line(populated, home: Path):
    result = subprocess.run([sys.executable, "-m", "gpt2cli", "--home", str(home), "artifacts", "ls", "--json"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "gpt2: error: standard output is closed: nowhere to write the --json result\n"


def test_refresh_usage_errors_end_with_the_one_error_line(gpt2, home: Path, tmp_path: Path, monkeypatch):
    """Each is logged (the refresh log) and also ends stderr with `gpt2: error: ...`, exit 2; a bad table of a
    stage is found before the first stage runs."""
    monkeypatch.delenv("GPT2_RUN_CONFIG", raising=False)
    log = home / "logs" / "refresh.log"
    result = gpt2("refresh")
    assert result.code == 2 and result.err.splitlines()[-1].startswith("gpt2: error: refresh needs a run config")
    assert "ERROR refresh needs a run config" in log.read_text()
    config = tmp_path / "run.toml"
    (tmp_path / "urls.txt").write_text("https://example.com/a\n")
    config.write_text(f'[scrape-reddit]\nurls = ["{tmp_path / "urls.txt"}"]\n\n[dedupe]\nbogus = 1\n')
    result = gpt2("--run-config", str(config), "refresh")
    assert result.code == 2 and result.err.splitlines()[-1].startswith(f"gpt2: error: {config}: [dedupe] has no")
    assert "started" not in log.read_text()
    config.write_text('[tokenize]\ncorpus = "corpus"\n')  # no link source for the scrape-reddit stage
    result = gpt2("--run-config", str(config), "--json", "refresh")
    assert result.code == 2 and json.loads(result.out) == {"status": 2, "stages": []}
    assert result.err.splitlines()[-1].startswith("gpt2: error: no link source: ")
    assert "ERROR no link source" in log.read_text() and "started" not in log.read_text()


def test_another_refresh_running_is_one_warning_line(gpt2, home: Path, tmp_path: Path):
    import subprocess
    import sys

    config, marker = tmp_path / "run.toml", tmp_path / "locked"
    (tmp_path / "urls.txt").write_text("https://example.com/a\n")
    config.write_text(f'[scrape-reddit]\nurls = ["{tmp_path / "urls.txt"}"]\n')
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, pathlib; from gpt2cli.artifacts import "
                               "hold_lock\nwith hold_lock(pathlib.Path(sys.argv[1]), 'the refresh'):\n"
                               "    pathlib.Path(sys.argv[2]).touch(); time.sleep(60)",
                               str(home / ".refresh.lock"), str(marker)])  # fmt: skip
    try:
        wait_for(marker)
        result = gpt2("--run-config", str(config), "refresh")
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 75 and not result.out
    assert re.fullmatch(
        rf"\S+Z WARNING another run holds the refresh \(pid {holder.pid}\); retry later or pass --wait\n", result.err
    )


def test_lines_a_script_greps_are_not_wrapped_in_pipes(gpt2, tmp_path: Path):
    """Off a terminal nothing is wrapped at 80 columns: a verify problem, `no artifacts in HOME`."""
    home = tmp_path / ("a-long-folder-name-" * 6) / "home"
    result = gpt2("--home", str(home), "artifacts", "ls")
    assert result.code == 0 and result.err == f"no artifacts in {home}\n"
    result = run_module("--home", str(home), "artifacts", "ls")  # a real pipe
    assert result.returncode == 0 and result.stderr == f"no artifacts in {home}\n"
    Store(home).produce("corpus", params={}, inputs=[], build=write_files(a="text"))
    manifest = home / "corpus" / "v1" / "manifest.json"
    manifest.write_text("{")
    result = gpt2("--home", str(home), "artifacts", "verify")
    assert result.code == 1 and result.err.count("\n") == 1
    assert result.err.startswith(f"corpus@v1: manifest {manifest} does not parse: ")


def test_tables_and_trees_keep_whole_paths_in_pipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Off a terminal, `ls` and `lineage` are not cut at 80 columns: whole paths, hashes and times."""
    monkeypatch.delenv("COLUMNS", raising=False)
    home, source = tmp_path / "home", tmp_path / ("a-long-folder-name-" * 6) / "input.txt"
    source.parent.mkdir()
    source.write_text("text")
    from gpt2cli.artifacts import file_input

    made = Store(home).produce("corpus", params={}, inputs=[file_input(source)], build=write_files(a="text"))
    listed = run_module("--home", str(home), "artifacts", "ls")
    assert made.artifact.manifest["created_at"] in listed.stdout
    tree = run_module("--home", str(home), "artifacts", "lineage", "corpus")
    assert tree.returncode == 0 and f"{source}  (4 B, sha256 {made.artifact.inputs[0]['sha256'][:12]})" in tree.stdout


def test_raw_docs_and_input_typed_together_are_a_usage_error(gpt2, home: Path, tmp_path: Path):
    """Both typed: refused (the stage would read only the --input files); one from the run config's [dedupe]
    table and the other typed: the typed one wins."""
    result = gpt2("dedupe", "--raw-docs", "raw-docs@v1", "--input", str(tmp_path / "extra.jsonl"))
    assert result.code == 2 and result.err == "gpt2: error: give --raw-docs or --input, not both\n"
    config, missing = tmp_path / "run.toml", tmp_path / "missing.jsonl"
    config.write_text('[dedupe]\nraw_docs = ["raw-docs@v1"]\n')
    result = gpt2("--run-config", str(config), "dedupe", "--input", str(missing))  # the --input file is read
    assert result.code == 2 and result.err == f"gpt2: error: input {missing} does not exist\n"
    config.write_text(f'[dedupe]\ninput = ["{missing}"]\n')
    result = gpt2("--run-config", str(config), "dedupe", "--raw-docs", "raw-docs@v1")  # the raw-docs are read
    assert result.code == 2 and result.err.startswith("gpt2: error: no raw-docs@v1: no 'raw-docs' artifact in ")


def test_a_stage_usage_error_names_the_run_config_key_it_came_from(gpt2, populated, tmp_path: Path):
    """A usage error the stage itself raises (a range, a missing file, a reference) about a value the run config
    gave ends with where it came from; the same value typed says nothing of the run config."""
    config = tmp_path / "run.toml"
    config.write_text("[dedupe]\nthreshold = 1.5\n")
    result = gpt2("--run-config", str(config), "dedupe")
    assert result.code == 2 and result.err.count("\n") == 1
    assert result.err.endswith(f"got 1.5 (from {config} [dedupe] threshold)\n")
    typed = gpt2("--run-config", str(config), "dedupe", "--threshold", "1.5")
    assert typed.code == 2 and typed.err == "gpt2: error: --threshold must be in (0, 1), got 1.5\n"
    config.write_text('[dedupe]\nthreshold = 0.5\ninput = "nonexist.jsonl"\n')
    result = gpt2("--run-config", str(config), "dedupe")
    assert result.code == 2
    # the run config's relative path is beside it; a typed one is relative to the current directory
    assert result.err == f"gpt2: error: input {tmp_path}/nonexist.jsonl does not exist (from {config} [dedupe] input)\n"
    typed = gpt2("--run-config", str(config), "dedupe", "--input", "nonexist.jsonl")
    assert typed.code == 2 and typed.err == "gpt2: error: input nonexist.jsonl does not exist\n"
    config.write_text('[dedupe]\nraw_docs = ["raw-docs@v99"]\n')  # in a home without any raw-docs
    result = gpt2("--home", str(tmp_path / "empty"), "--run-config", str(config), "dedupe")
    assert result.code == 2 and result.err.startswith("gpt2: error: no raw-docs@v99: no 'raw-docs' artifact in ")
    assert result.err.endswith(f" (from {config} [dedupe] raw_docs)\n") and result.err.count("\n") == 1
    config.write_text('[tokenize]\ncorpus = "corpus@v99"\n')
    result = gpt2("--run-config", str(config), "tokenize")
    assert result.code == 2 and result.err.startswith("gpt2: error: no corpus@v99")
    assert result.err.endswith(f" (from {config} [tokenize] corpus)\n") and result.err.count("\n") == 1
    config.write_text("[eval]\nlimit = 3\n")  # eval's options belong in its commands' tables
    result = gpt2("--run-config", str(config), "artifacts", "ls")
    assert result.code == 2 and result.err == (
        f"gpt2: error: {config}: [eval] holds subcommand tables ([eval.zero-shot]), not options; "
        "put limit under [eval.zero-shot]\n"
    )


def test_refresh_checks_each_stage_value_type_before_the_first_stage(gpt2, home: Path, tmp_path: Path, monkeypatch):
    """A value of the wrong type in a later stage's table fails at once, not after an hour of scraping."""
    monkeypatch.delenv("GPT2_RUN_CONFIG", raising=False)
    config = tmp_path / "run.toml"
    (tmp_path / "urls.txt").write_text("https://example.com/a\n")
    config.write_text(f'[scrape-reddit]\nurls = ["{tmp_path / "urls.txt"}"]\n\n[dedupe]\nthreshold = "abc"\n')
    result = gpt2("--run-config", str(config), "refresh")
    assert result.code == 2
    assert result.err.splitlines()[-1].startswith(f"gpt2: error: invalid value in {config} [dedupe] threshold: ")
    assert "started" not in (home / "logs" / "refresh.log").read_text()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("[dedupe]\nthreshold = 1.5\n", "--threshold must be in (0, 1), got 1.5 (from {config} [dedupe] threshold)"),
        (
            "[tokenize]\nbatch-docs = 0\n",
            "--batch-docs must be in 1..10_000_000, got 0 (from {config} [tokenize] batch-docs)",
        ),
        (
            "[scrape-reddit]\nper_host_interval = -1.0\n",
            "--per-host-interval must be a number of seconds in [0, 86400], got -1.0 (from {config}",
        ),
        ('[scrape-reddit]\nsince = "2018-01-01"\nuntil = "2017-01-01"\n', "--since 2018-01-01 is after --until"),
        (
            '[tokenize]\ncorpus = "corpus"\nval_fraction = 0.1\n',
            "--val-fraction splits --input documents; a corpus keeps the split",
        ),
    ],
)
def test_refresh_checks_each_stage_value_range_before_the_first_stage(
    gpt2, home: Path, tmp_path: Path, monkeypatch, tables: str, message: str
):
    """The stage's own checks of its settings (ranges, dates) run on every stage's table before the first stage
    starts: a bad value in [dedupe] fails the refresh at once, not after the crawl, and names its key."""
    monkeypatch.delenv("GPT2_RUN_CONFIG", raising=False)
    (tmp_path / "urls.txt").write_text("https://example.com/a\n")
    config = tmp_path / "run.toml"
    link_source = f'urls = ["{tmp_path / "urls.txt"}"]\n'
    if tables.startswith("[scrape-reddit]"):
        config.write_text(tables + link_source)
    else:
        config.write_text(f"[scrape-reddit]\n{link_source}\n{tables}")
    result = gpt2("--run-config", str(config), "refresh")
    assert result.code == 2, result.err
    assert result.err.splitlines()[-1].startswith(f"gpt2: error: {message.format(config=config)}"), result.err
    assert "started" not in (home / "logs" / "refresh.log").read_text()
    assert not [p for p in home.iterdir() if p.name != "logs"]  # no stage ran
