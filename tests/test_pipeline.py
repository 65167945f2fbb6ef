"""The whole chain on a reduced sample, driven by one run config as `make demo` drives it; the cron refresh."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpt2cli.artifacts import Store, hold_lock
from tests.conftest import SAMPLE, run_cli

REDDIT = SAMPLE.parent / "reddit"
NOVEMBER, JANUARY, WARC = REDDIT / "RS_2017-11.zst", REDDIT / "RS_2018-01.zst", REDDIT / "pages.warc.gz"
CHAIN = (["scrape-reddit"], ["dedupe"], ["train-bpe"], ["tokenize"], ["pretrain"], ["eval", "zero-shot"])


def run_config(path: Path, dumps: list[Path], vocab_size: int = 512) -> Path:
    """The sample's run config, reduced so that the chain takes well under a minute."""
    path.write_text(f"""
[scrape-reddit]
dump = {json.dumps([str(d) for d in dumps])}
replay = ["{WARC}"]

[train-bpe]
corpus = "corpus"
vocab_size = {vocab_size}

[tokenize]
corpus = "corpus"

[pretrain]
model_size = "tiny"
seq_len = 64
micro_batch = 8
global_batch_tokens = 1024
max_steps = 200
warmup_steps = 5
learning_rate = 3e-3
eval_every = 50
eval_batches = 4
checkpoint_every = 100
device = "cpu"
dtype = "float32"

[eval.zero-shot]
task = ["webtext"]
dtype = "float32"
""")
    return path


def chain(home: Path, config: Path) -> list[dict]:
    outputs = []
    for stage in CHAIN:
        result = run_cli(home, "--run-config", str(config), "--json", *stage)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
        outputs.append(json.loads(result.stdout))
    return outputs


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """The chain, built once per test run: the first pytest-xdist worker builds it under a lock in the
    directory all workers share, the others wait and read it (tests copy it before changing anything)."""
    shared = tmp_path_factory.getbasetemp().parent
    home, config, done = shared / "pipeline-home", shared / "pipeline.toml", shared / "pipeline.json"
    with hold_lock(shared / "pipeline.lock", "the pipeline fixture", wait=True):
        if not done.exists():
            run_config(config, [NOVEMBER])
            done.write_text(json.dumps(chain(home, config)))
    return home, config, json.loads(done.read_text())


def test_chain_learns_and_reports(pipeline):
    home, config, outputs = pipeline
    assert [o["ref"] for o in outputs] == ["raw-docs@v1", "corpus@v1", "tokenizer@v1", "tokens@v1", "model@v1",
                                           "eval@v1"]  # fmt: skip
    result = run_cli(home, "--run-config", str(config), "report", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    learning = report["learning"]
    assert learning["learned"] and learning["val_loss"] < learning["unigram_entropy"] - 0.5, learning
    assert "below the unigram entropy" in learning["statement"]
    assert Path(report["loss_png"]).is_file() and len(report["val_loss_curve"]) >= 3
    assert report["eval"] == "eval@v1" and any(row[0].startswith("webtext") for row in report["eval_rows"])
    assert len(report["samples"]) == 3 and all(s["text"] for s in report["samples"])
    assert report["lineage"]["ref"] == "model@v1"
    assert {v["kind"] for v in report["versions"]} >= {"raw-docs", "corpus", "tokenizer", "tokens", "model", "eval"}
    screen = run_cli(home, "--run-config", str(config), "report")
    assert screen.returncode == 0 and "unigram entropy" in screen.stdout and "sample 3" in screen.stdout


def test_second_run_reuses_everything_and_a_changed_stage_recomputes_downstream(pipeline, tmp_path: Path):
    home, config, _ = pipeline
    home_copy = tmp_path / "home"
    shutil.copytree(home, home_copy)
    again = chain(home_copy, config)
    assert all(o["reused"] for o in again), again
    # one table changed: that stage runs again, everything upstream is reused (a mid-chain change is the same
    # mechanism: each stage's identity is its settings plus its inputs' versions)
    changed = tmp_path / "changed.toml"
    changed.write_text(config.read_text().replace('task = ["webtext"]', 'task = ["webtext"]\nstride = 32'))
    after = chain(home_copy, changed)
    assert [o["reused"] for o in after] == [True, True, True, True, True, False], after
    assert after[-1]["ref"] == "eval@v2"
    tokenizer = run_cli(home_copy, "--json", "train-bpe", "--corpus", "corpus", "--vocab-size", "600")
    tokens = run_cli(home_copy, "--json", "tokenize", "--corpus", "corpus")
    assert tokenizer.returncode == 0 and tokens.returncode == 0, tokenizer.stderr + tokens.stderr
    assert json.loads(tokenizer.stdout)["ref"] == "tokenizer@v2" and json.loads(tokens.stdout)["ref"] == "tokens@v2"


def test_run_config_typos_are_usage_errors(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train-bpe]\nvocab = 300\n")
    result = run_cli(tmp_path, "--run-config", str(bad), "train-bpe")  # its own table: `artifacts ls` ignores it
    assert result.returncode == 2 and "has no option 'vocab'" in result.stderr
    bad.write_text("[trian-bpe]\nvocab_size = 300\n")
    result = run_cli(tmp_path, "--run-config", str(bad), "artifacts", "ls")
    assert result.returncode == 2 and "[trian-bpe] is not a command" in result.stderr


def test_a_run_config_may_give_one_value_for_a_repeatable_option(tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_text(f'[train-bpe]\ninput = "{SAMPLE}"\nvocab_size = 300\n')  # not ["..."]
    result = run_cli(tmp_path / "home", "--run-config", str(config), "--json", "train-bpe")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ref"] == "tokenizer@v1"


def corpus_texts(home: Path) -> list[tuple[str, str]]:
    rows = pq.read_table(Store(home).resolve("corpus").file("documents-00000.parquet")).to_pylist()
    return sorted((r["url"], r["text"]) for r in rows)


def test_refresh_adds_new_links_and_overlapping_runs_exit_75(pipeline, tmp_path: Path):
    home, _, _ = pipeline
    target = tmp_path / "home"
    shutil.copytree(home, target)
    config = run_config(tmp_path / "refresh.toml", [NOVEMBER, JANUARY])
    before = run_cli(target, "artifacts", "ls", "--json").stdout
    with hold_lock(target / ".refresh.lock", "a test's refresh"):
        busy = run_cli(target, "--run-config", str(config), "refresh")
    assert busy.returncode == 75, busy.stderr
    assert run_cli(target, "artifacts", "ls", "--json").stdout == before  # nothing touched
    done = run_cli(target, "--run-config", str(config), "refresh")
    assert done.returncode == 0, done.stderr
    store = Store(target)
    assert store.latest("raw-docs").ref == "raw-docs@v2" and store.latest("corpus").ref == "corpus@v2"
    assert store.resolve("corpus@v2").parent["ref"] == "corpus@v1" and store.latest("tokens").ref == "tokens@v2"
    log = (target / "logs" / "refresh.log").read_text()
    assert "dedupe: published corpus@v2" in log and "another run holds the refresh" in log
    shutil.rmtree(target / "eval")
    shutil.rmtree(target / "model")  # so that no kept version reads tokens@v1
    quiet = run_cli(target, "--run-config", str(config), "refresh", "--keep", "1")  # nothing new: every stage reused
    assert quiet.returncode == 0 and store.latest("corpus").ref == "corpus@v2"
    assert "gc: deleted 1 versions" in (target / "logs" / "refresh.log").read_text()
    assert [a.ref for a in store.versions("tokens")] == ["tokens@v2"] and not store.gc(1, dry_run=True).removed


def test_killed_refresh_leaves_good_versions_and_the_next_one_finishes(pipeline, tmp_path: Path):
    home, _, _ = pipeline
    config = run_config(tmp_path / "refresh.toml", [NOVEMBER, JANUARY])
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(home, whole)
    shutil.copytree(home, killed)
    assert run_cli(whole, "--run-config", str(config), "refresh").returncode == 0
    env = {**os.environ, "GPT2_HOME": str(killed), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "gpt2cli", "--run-config", str(config), "refresh"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    log = killed / "logs" / "refresh.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "dedupe: started" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # the refresh and the stage it is running, mid-way
    child.wait()
    verify = run_cli(killed, "artifacts", "verify", "corpus")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert Store(killed).latest("tokens").ref == "tokens@v1"  # the last good version is still the latest
    finish = run_cli(killed, "--run-config", str(config), "refresh")
    assert finish.returncode == 0, finish.stderr
    assert corpus_texts(killed) == corpus_texts(whole)
    assert Store(killed).latest("tokens").summary == Store(whole).latest("tokens").summary


def test_sigterm_stops_the_refresh_and_its_stage(pipeline, tmp_path: Path):
    home, _, _ = pipeline
    config = run_config(tmp_path / "refresh.toml", [NOVEMBER, JANUARY])
    target = tmp_path / "home"
    shutil.copytree(home, target)
    env = {**os.environ, "GPT2_HOME": str(target), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "gpt2cli", "--run-config", str(config), "refresh"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = target / "logs" / "refresh.log"
    deadline = time.monotonic() + 120
    children = Path(f"/proc/{child.pid}/task/{child.pid}/children")
    stages: list[int] = []
    while time.monotonic() < deadline and not stages:  # the log says "started" just before the stage's fork
        if "dedupe: started" in (log.read_text() if log.exists() else ""):
            stages = [int(pid) for pid in children.read_text().split()]
        time.sleep(0.05)
    assert stages, "the dedupe stage was not running"
    child.send_signal(signal.SIGTERM)  # the refresh alone, as a scheduler stopping the job does
    assert child.wait(timeout=60) == 143
    assert not [pid for pid in stages if Path(f"/proc/{pid}").exists()], "the stage outlived the refresh"
    assert "dedupe: stopped by SIGTERM" in log.read_text()
    assert Store(target).latest("corpus").ref == "corpus@v1"
    finish = run_cli(target, "--run-config", str(config), "--json", "refresh")
    assert finish.returncode == 0, finish.stderr
    stages_done = json.loads(finish.stdout)["stages"]
    assert [s["stage"] for s in stages_done] == ["scrape-reddit", "dedupe", "tokenize"]
    assert stages_done[1]["ref"] == "corpus@v2" and not stages_done[1]["reused"]


def test_sigterm_stops_a_refresh_waiting_for_the_lock(tmp_path: Path):
    home, config = tmp_path / "home", run_config(tmp_path / "refresh.toml", [NOVEMBER])
    env = {**os.environ, "GPT2_HOME": str(home), "GPT2_RUN_CONFIG": str(config)}  # without one: exit 2 at once
    with hold_lock(home / ".refresh.lock", "a test's refresh"):
        child = subprocess.Popen([sys.executable, "-m", "gpt2cli", "refresh", "--wait", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        log = home / "logs" / "refresh.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "waiting for the refresh" not in (
            log.read_text() if log.exists() else ""
        ):
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)  # while the lock is still held
    assert child.returncode == 143 and json.loads(out) == {"status": 143, "stages": []}
    assert "stopped by SIGTERM with no stage running" in log.read_text()


def test_an_interrupted_refresh_says_so_in_its_log(gpt2, home: Path, tmp_path: Path, monkeypatch):
    from gpt2cli import refresh

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(refresh, "_run", interrupted)
    result = gpt2("--run-config", str(run_config(tmp_path / "refresh.toml", [NOVEMBER])), "refresh")
    assert result.code == 130 and result.err.splitlines()[-1] == "gpt2: interrupted"
    assert "interrupted (SIGINT); the next refresh finishes the work" in (home / "logs" / "refresh.log").read_text()


@pytest.mark.parametrize(("number", "name"), [(9, "SIGKILL"), (15, "SIGTERM"), (40, "signal 40")])
def test_a_stage_killed_by_a_signal_fails_with_the_status_a_shell_gives(number: int, name: str):
    """The OOM killer's SIGKILL: 137 and its name, not Python's -9 (which an exit status turns into 247); a
    real-time signal has a number only."""
    from gpt2cli.refresh import _run, _Stop

    suicide = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {number})"]
    assert _run("tokenize", suicide, _Stop()) == (128 + number, None, f"killed by {name}")


def test_a_log_file_that_stops_taking_lines_is_said_once_and_left(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A full disk under refresh.log: one warning on stderr, not a traceback per line in the mail cron sends."""
    import logging

    from gpt2cli.console import setup_logging
    from gpt2cli.refresh import log_to_file

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    logger = logging.getLogger("gpt2cli")
    before = (list(logger.handlers), logger.level, logger.propagate)
    setup_logging()
    log_to_file(tmp_path / "logs" / "refresh.log", max_bytes=10_000, backups=1)
    log_file = logger.handlers[-1]
    log_file.stream.close()
    log_file.stream = FullDisk()
    try:
        for i in range(5):
            logging.getLogger("gpt2cli.refresh").warning("line %d", i)
    finally:
        logger.handlers[:], logger.level, logger.propagate = before
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("cannot write") == 1 and "No space left on device): logging on stderr only" in err
    assert err.count("line ") == 5  # every line still reaches stderr


def test_refresh_log_rotates_by_size(tmp_path: Path):
    import logging

    from gpt2cli.refresh import log_to_file

    logger = logging.getLogger("gpt2cli")
    before = list(logger.handlers)
    log_to_file(tmp_path / "logs" / "refresh.log", max_bytes=300, backups=2)
    try:
        for i in range(60):
            logging.getLogger("gpt2cli.refresh").warning("stage line %d of a long refresh", i)
    finally:
        for handler in logger.handlers[len(before) :]:
            handler.close()
        logger.handlers[:] = before
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["refresh.log", "refresh.log.1", "refresh.log.2"]
    assert all(p.stat().st_size <= 300 for p in (tmp_path / "logs").iterdir())
    assert "stage line 59" in (tmp_path / "logs" / "refresh.log").read_text()
