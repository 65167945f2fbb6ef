from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2cli.artifacts import Artifact, Store, artifact_input, sha256_file
from gpt2cli.bpe.shards import HEADER, TokenShard
from gpt2cli.model import GPT
from gpt2cli.train.config import TrainConfig
from gpt2cli.train.loop import learning_rate
from tests.conftest import FAST, SAMPLE, run_cli


@pytest.fixture
def home(tokens_home: Path, tmp_path: Path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(tokens_home, target)
    return target


def losses(home: Path, ref: str = "model", key: str = "loss") -> list[float]:
    artifact = Store(home).resolve(ref)
    rows = [json.loads(line) for line in artifact.file("metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r[key] for r in rows]


def start(home: Path, *args: str, quiet: bool = False) -> subprocess.Popen[str]:
    """`python -m gpt2cli ARGS` in the background with GPT2_HOME=home; its output piped, or dropped when ``quiet``."""
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "gpt2cli", *args], stdout=out, stderr=out, text=True,
                            env={**os.environ, "GPT2_HOME": str(home), "OMP_NUM_THREADS": "1"})  # fmt: skip


def trained_to_10(home: Path, args: list[str]) -> tuple[list[float], Path]:
    """Train with ``args`` (to step 10): the losses, and the last checkpoint's state file."""
    assert run_cli(home, *args).returncode == 0
    (run_dir,) = (home / "model" / ".runs").iterdir()
    return losses(home), run_dir / "step-00000010" / "state.pt"


def test_a_run_queued_with_wait_reuses_what_the_run_before_it_published(home: Path):
    """Two identical runs: the second, waiting for the first's lock, finds the model it published once the lock is
    free, instead of training again and publishing a second copy."""
    args = ["pretrain", *FAST, "--max-steps", "300", "--eval-every", "300", "--checkpoint-every", "300",
            "--log-every", "1", "--wait", "--json"]  # fmt: skip
    first = start(home, *args)
    for line in first.stderr:  # training: it holds the run's lock
        if " step 1/300 " in line:
            break
    queued = start(home, *args)
    waited = False
    for line in queued.stderr:
        waited = waited or "waiting for training run" in line
        if waited:
            break
    first_out, _ = first.communicate(timeout=300)
    queued_out, queued_err = queued.communicate(timeout=300)
    assert waited and first.returncode == 0 and queued.returncode == 0, queued_err
    built, reused = json.loads(first_out), json.loads(queued_out)
    assert (built["ref"], built["reused"]) == ("model@v1", False)
    assert (reused["ref"], reused["reused"]) == ("model@v1", True)
    assert [a.ref for a in Store(home).versions("model")] == ["model@v1"]


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=100)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(55, cfg) == pytest.approx(0.55)
    assert learning_rate(100, cfg) == pytest.approx(0.1) and learning_rate(500, cfg) == pytest.approx(0.1)
    longer = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=50, lr_decay_steps=100)
    assert learning_rate(49, longer) == learning_rate(49, cfg)


def test_pretrain_publishes_a_model_that_learns(home: Path):
    result = run_cli(home, "pretrain", *FAST, "--max-steps", "20", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    summary = out["summary"]
    assert out["ref"] == "model@v1" and summary["steps"] == 20 and summary["parameters"] > 0
    folder = Path(out["path"])
    expected = {"model.safetensors", "config.json", "encoder.json", "vocab.bpe", "tokenizer.json", "metrics.jsonl",
                "loss.png", "manifest.json"}  # fmt: skip
    assert expected <= {p.name for p in folder.iterdir()}
    assert (folder / "loss.png").read_bytes()[:4] == b"\x89PNG"
    curve = losses(home)
    assert curve[-1] < curve[0] - 0.5  # it learns
    assert summary["val_loss"] is not None and summary["val_loss"] < 6.0
    manifest = Store(home).resolve("model").manifest
    assert manifest["params"]["max_steps"] == 20 and manifest["params"]["model"]["vocab_size"] == 400
    assert [i["ref"] for i in manifest["inputs"]] == ["tokens@v1", "tokenizer@v1"]
    model = GPT.load(folder)
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 400)
    run_dir = Path(summary["run_dir"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 20
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    again = run_cli(home, "pretrain", *FAST, "--max-steps", "20", "--json")
    assert json.loads(again.stdout)["reused"] is True


def test_resume_is_bit_exact(home: Path, tmp_path: Path):
    """With dropout, so that the RNG state must be carried over exactly too."""
    straight_home = tmp_path / "straight"
    shutil.copytree(home, straight_home)
    assert run_cli(straight_home, "pretrain", *FAST, "--dropout", "0.1", "--max-steps", "12").returncode == 0
    first = run_cli(home, "pretrain", *FAST, "--dropout", "0.1", "--max-steps", "6", "--lr-decay-steps", "12")
    assert first.returncode == 0, first.stderr
    second = run_cli(home, "pretrain", *FAST, "--dropout", "0.1", "--max-steps", "12", "--resume")
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stderr
    assert losses(home, "model@v2") == losses(straight_home)  # identical, not merely close


def test_kill_9_mid_run_then_resume_is_bit_exact(home: Path, tmp_path: Path):
    straight_home = tmp_path / "straight"
    shutil.copytree(home, straight_home)
    args = ["pretrain", *FAST, "--dropout", "0.1", "--max-steps", "40"]
    assert run_cli(straight_home, *args).returncode == 0
    proc = start(home, *args, quiet=True)
    deadline = time.time() + 120
    while not list((home / "model" / ".runs").glob("*/step-00000010")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (home / "model" / "v1").exists()
    resumed = run_cli(home, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(home) == losses(straight_home)


def test_sigterm_saves_and_exits_then_resumes(home: Path, tmp_path: Path):
    args = ["pretrain", *FAST, "--max-steps", "400", "--checkpoint-every", "1000", "--eval-every", "1000"]
    proc = start(home, *args)
    deadline = time.time() + 120
    while not list((home / "model" / ".runs").glob("*/metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM after step" in err and "run the same command again to resume" in err
    (checkpoint,) = list((home / "model" / ".runs").glob("*/step-*"))
    step = int(checkpoint.name[5:])
    assert 0 < step < 400
    result = run_cli(home, "pretrain", *FAST, "--max-steps", str(step + 3), "--lr-decay-steps", "400",
                     "--checkpoint-every", "1000", "--eval-every", "1000")  # fmt: skip
    assert result.returncode == 0 and f"(step {step})" in result.stderr


def test_nan_loss_stops_with_a_clear_message(home: Path):
    result = run_cli(home, "pretrain", *FAST, "--max-steps", "30", "--learning-rate", "1e12", "--grad-clip", "0",
                     "--warmup-steps", "0")  # fmt: skip
    assert result.returncode == 1
    assert "gpt2: error: loss is" in result.stderr and "lower the learning rate" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_are_usage_errors(home: Path, tmp_path: Path):
    too_long = run_cli(home, "pretrain", *FAST, "--seq-len", "256")
    assert too_long.returncode == 2 and "longer than the model's context (128)" in too_long.stderr
    uneven = run_cli(home, "pretrain", *FAST, "--global-batch-tokens", "100")
    assert uneven.returncode == 2 and "must be a multiple of" in uneven.stderr
    toml = tmp_path / "run.toml"
    toml.write_text("[pretrain]\nmax_steps = 3\nnot_a_setting = 1\n")
    assert run_cli(home, "pretrain", "--config", str(toml)).returncode == 2
    assert run_cli(home, "pretrain", "--tokens", "tokenizer").returncode == 2


def test_a_finished_run_rerun_with_other_bookkeeping_reuses_its_model(home: Path):
    """Evaluating, saving or logging more often changes nothing a finished run computed: no new version claims
    settings its metrics were not made with. The run is the same when the home was named relative to another
    directory."""
    assert run_cli(home, "--home", home.name, "pretrain", *FAST, "--max-steps", "10", cwd=home.parent).returncode == 0
    again = run_cli(home, "pretrain", *FAST, "--max-steps", "10", "--eval-every", "2", "--log-every", "1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ref"] == "model@v1" and json.loads(again.stdout)["reused"] is True
    assert Store(home).resolve("model").params["eval_every"] == 5
    longer = run_cli(home, "pretrain", *FAST, "--max-steps", "12", "--lr-decay-steps", "10", "--json")
    assert longer.returncode == 0 and json.loads(longer.stdout)["ref"] == "model@v2", longer.stderr


def test_toml_config_and_flags(home: Path, tmp_path: Path):
    toml = tmp_path / "run.toml"
    toml.write_text("[pretrain]\nmax_steps = 4\nseed = 7\n")
    result = run_cli(home, "pretrain", *FAST, "--config", str(toml), "--max-steps", "3", "--json")
    assert result.returncode == 0, result.stderr
    params = Store(home).resolve("model").params
    assert params["max_steps"] == 3 and params["seed"] == 7  # the flag wins over the file


def test_vocabulary_mismatch_is_refused(home: Path):
    store = Store(home)
    tokens = store.resolve("tokens")
    assert run_cli(home, "train-bpe", "--input", str(SAMPLE), "--vocab-size", "500").returncode == 0

    def build(draft):
        for name in ("train.bin", "val.bin"):
            shutil.copy(tokens.file(name), draft.dir / name)
        return tokens.summary

    recorded = artifact_input(store.resolve("tokenizer@v2"))
    store.produce("tokens", params={"hand-made": True}, inputs=[recorded], build=build)
    result = run_cli(home, "pretrain", *FAST, "--max-steps", "2")
    assert result.returncode == 1
    assert "encoded with a 400-token vocabulary but its tokenizer tokenizer@v2 has 500" in result.stderr


@pytest.mark.parametrize("sharding", ["--no-fsdp", "--fsdp"])
def test_two_gloo_processes_match_one(home: Path, tmp_path: Path, sharding: str):
    single_home = tmp_path / "single"
    shutil.copytree(home, single_home)
    args = ["pretrain", *FAST, "--max-steps", "6", "--micro-batch", "2", "--checkpoint-every", "3"]
    one = run_cli(single_home, *args)
    assert one.returncode == 0, one.stderr
    two = torchrun(home, *args, sharding)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("published model@v1") == 1  # only rank 0 writes and reports
    assert losses(home) == pytest.approx(losses(single_home), rel=1e-5)


def torchrun(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`gpt2 ARGS` in 2 processes (gloo on the CPU) under torchrun."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2cli", *args],
        env={**os.environ, "GPT2_HOME": str(home), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fsdp_evaluates_a_number_of_batches_that_the_processes_do_not_divide(home: Path, tmp_path: Path):
    """3 batches for 2 processes: both run 2 forward passes (each gathers the sharded weights from both), the
    one past the 3rd not counted, so the validation loss is the 3 batches' mean, as one process computes it."""
    single_home = tmp_path / "single"
    shutil.copytree(home, single_home)
    args = ["pretrain", *FAST, "--max-steps", "1", "--micro-batch", "2", "--eval-batches", "3"]
    assert run_cli(single_home, *args).returncode == 0
    two = torchrun(home, *args, "--fsdp", timeout=120)  # a process left waiting for the others hangs until then
    assert two.returncode == 0, two.stderr[-3000:]
    assert losses(home, key="val_loss") == pytest.approx(losses(single_home, key="val_loss"), rel=1e-5)


def test_export_hf_loads_in_transformers(home: Path, tmp_path: Path):
    transformers = pytest.importorskip("transformers", reason="transformers (a dev dependency) checks the export")
    assert run_cli(home, "pretrain", *FAST, "--max-steps", "2").returncode == 0
    out = tmp_path / "hf"
    result = run_cli(home, "export", "model", "--format", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = GPT.load(Store(home).resolve("model")).eval()
    idx = torch.randint(0, 400, (2, 32))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)).abs().max().item() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    from gpt2cli.bpe import Tokenizer

    tok = Tokenizer.load(Store(home).resolve("tokenizer"))
    text = (SAMPLE / "002-pork-and-chive-dumplings.txt").read_text(encoding="utf-8")
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eot_id
    saved = tmp_path / "saved"  # what transformers writes back (recent versions: tokenizer.json alone) samples too
    hf.save_pretrained(saved)
    hf_tok.save_pretrained(saved)
    assert Tokenizer.load(saved).encode(text) == tok.encode(text)
    assert run_cli(home, "sample", str(saved), "--prompt", "The", "--max-new-tokens", "3").returncode == 0
    again = run_cli(home, "export", "model", "--out", str(out))
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert run_cli(home, "export", "model", "--out", str(out), "--format", "onnx").returncode == 2


def test_compiled_training_matches_eager(home: Path, tmp_path: Path):
    """--compile (inductor; needs a C++ compiler on CPUs) trains the same model as eager mode."""
    eager_home = tmp_path / "eager"
    shutil.copytree(home, eager_home)
    assert run_cli(eager_home, "pretrain", *FAST, "--max-steps", "3").returncode == 0
    compiled = run_cli(home, "pretrain", *FAST, "--max-steps", "3", "--compile")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert losses(home) == pytest.approx(losses(eager_home), rel=1e-4)


def test_tokens_without_a_validation_split_train_with_one_warning(home: Path, gpt2):
    """Not an error: the run trains, says once at the start that it computes no validation loss, and the model
    records none."""
    assert gpt2("tokenize", "--input", str(SAMPLE), "--val-fraction", "0").code == 0
    result = gpt2("pretrain", *FAST, "--max-steps", "1", "--json")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "validation loss will not be computed" in line]
    assert len(warnings) == 1, result.err
    assert "tokens@v2 has no validation split (0 validation documents)" in warnings[0]
    assert "re-tokenize with a larger --val-fraction" in warnings[0]
    assert result.err.index("validation loss will not be computed") < result.err.index("step 1/1")  # at the start
    summary = json.loads(result.out)["summary"]
    assert summary["steps"] == 1 and summary["val_loss"] is None
    with_val = gpt2("pretrain", "--tokens", "tokens@v1", *FAST, "--max-steps", "1")
    assert with_val.code == 0 and "validation loss will not be computed" not in with_val.err, with_val.err


def test_tokenizer_replaced_under_the_same_name_is_refused(home: Path, gpt2):
    """The tokens name their tokenizer by version and manifest checksum: a different tokenizer@v1 (or none)
    must not be published with a model trained on them."""
    manifest = home / "tokenizer" / "v1" / "manifest.json"
    replaced = json.loads(manifest.read_text())
    replaced["created_at"] = "2000-01-01T00:00:00Z"
    manifest.write_text(json.dumps(replaced))
    result = gpt2("pretrain", *FAST, "--max-steps", "2")
    assert result.code == 1 and "Traceback" not in result.err
    assert "gpt2: error: tokens@v1 was encoded with a different tokenizer@v1" in result.err
    shutil.rmtree(home / "tokenizer" / "v1")
    gone = gpt2("pretrain", *FAST, "--max-steps", "2")
    assert gone.code == 1 and "gpt2: error: tokens@v1 was encoded with tokenizer@v1, which is gone" in gone.err
    assert not (home / "model").exists() or not list((home / "model").glob("v*"))


def test_truncated_checkpoint_falls_back_and_run_metrics_are_cut_back(home: Path, gpt2):
    """A damaged newest checkpoint is skipped for the one before it (same losses, dropout included), and the
    run directory's metrics.jsonl does not repeat the steps trained again; with none readable, one line."""
    args = ["pretrain", *FAST, "--dropout", "0.1", "--max-steps", "10"]
    straight, state = trained_to_10(home, args)
    run_dir = state.parent.parent
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    again = run_cli(home, *args, "--force")
    assert again.returncode == 0, again.stderr
    assert "step-00000010/state.pt is damaged" in again.stderr and "(step 5)" in again.stderr
    assert losses(home, "model@v2") == straight
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["loss"] for r in rows] == straight
    for step in ("step-00000005", "step-00000010"):
        (run_dir / step / "state.pt").write_bytes(b"not a checkpoint")
    result = gpt2(*args, "--force")
    assert result.code == 1 and "Traceback" not in result.err
    assert "gpt2: error: no checkpoint of this run" in result.err and "--restart" in result.err


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_last_one(home: Path, gpt2, monkeypatch):
    """torch reports a failed write (a full disk, a file size limit) as a RuntimeError: one line, exit 1, the
    checkpoint before it intact and no half-written one beside it."""
    from gpt2cli.train import checkpoint

    real, saves = checkpoint.torch.save, []

    def full_disk_at_the_second(state: object, f: object) -> None:
        saves.append(1)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nmore")
        real(state, f)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_at_the_second)
    result = gpt2("pretrain", *FAST, "--max-steps", "10")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert result.err.splitlines()[-1].startswith("gpt2: error: cannot write the checkpoint ")
    assert "step-00000010: [enforce fail" in result.err
    (run_dir,) = (home / "model" / ".runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".tmp", "step-"))) == ["step-00000005"]


def test_a_checkpoint_with_a_flipped_byte_is_skipped(home: Path):
    """torch.load reads a flipped byte in a tensor as a different model: the checkpoint's sha256 catches it."""
    args = ["pretrain", *FAST, "--max-steps", "10"]
    straight, path = trained_to_10(home, args)
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 5] ^= 0x40  # inside the tensors' data, which the zip format does not check
    path.write_bytes(bytes(data))
    again = run_cli(home, *args, "--force")
    assert again.returncode == 0, again.stderr
    assert "state.pt is damaged (its sha256 differs" in again.stderr and "(step 5)" in again.stderr
    assert losses(home, "model@v2") == straight


def test_a_non_finite_gradient_never_reaches_the_weights(home: Path, gpt2, monkeypatch: pytest.MonkeyPatch):
    """A finite loss can come with an overflowing gradient: the run stops before the optimizer applies it, so the
    checkpoint it names as the last good one is good, and the same command continues from it."""
    straight_home = home.parent / "straight"
    shutil.copytree(home, straight_home)
    args = ["pretrain", *FAST, "--max-steps", "6", "--checkpoint-every", "1"]
    assert run_cli(straight_home, *args).returncode == 0
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def poisoned(parameters, *rest, **kw):
        parameters = list(parameters)
        calls.append(len(calls) + 1)
        if len(calls) == 4:  # step 4's gradient overflows
            parameters[0].grad.fill_(float("inf"))
        return real(parameters, *rest, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    result = gpt2(*args)
    assert result.code == 1 and "gradient norm is inf at step 4: stopped" in result.err, result.err
    assert "the last good checkpoint (step-00000003) is kept" in result.err
    (run_dir,) = (home / "model" / ".runs").iterdir()
    state = torch.load(run_dir / "step-00000003" / "state.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (run_dir / "step-00000004").exists()
    monkeypatch.undo()
    again = run_cli(home, *args)
    assert again.returncode == 0 and "(step 3)" in again.stderr, again.stderr
    assert losses(home) == losses(straight_home)


def test_restart_deletes_the_runs_checkpoints_and_rotation_keeps_later_steps(home: Path):
    """--restart's checkpoints are never rotated away in favour of the discarded ones (whose higher step numbers
    would win), and a rerun with an earlier --max-steps keeps the later checkpoints of the same run."""
    args = ["pretrain", *FAST, "--lr-decay-steps", "10"]  # one schedule: one run, however far each goes
    assert run_cli(home, *args, "--max-steps", "10").returncode == 0
    (run_dir,) = (home / "model" / ".runs").iterdir()
    steps = lambda: sorted(p.name for p in run_dir.glob("step-*"))  # noqa: E731
    assert steps() == ["step-00000005", "step-00000010"]
    short = run_cli(home, *args, "--max-steps", "4", "--checkpoint-every", "2")
    assert short.returncode == 0, short.stderr
    assert steps() == ["step-00000002", "step-00000004", "step-00000005", "step-00000010"]
    restarted = run_cli(home, *args, "--max-steps", "3", "--checkpoint-every", "1", "--restart")
    assert restarted.returncode == 0 and "deleted the run's 4 checkpoints" in restarted.stderr, restarted.stderr
    assert steps() == ["step-00000002", "step-00000003"]
    resumed = run_cli(home, *args, "--max-steps", "10", "--force")
    assert resumed.returncode == 0 and "(step 3)" in resumed.stderr, resumed.stderr


def test_a_checkpoint_that_does_not_fit_the_model_falls_back(home: Path):
    args = ["pretrain", *FAST, "--max-steps", "10"]
    straight, path = trained_to_10(home, args)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "model": {"x": torch.zeros(1)}}, path)  # a readable file of another model
    (path.parent / "state.pt.sha256").write_text(sha256_file(path))
    again = run_cli(home, *args, "--force")
    assert again.returncode == 0, again.stderr
    assert "does not fit this model and optimizer" in again.stderr and "(step 5)" in again.stderr
    assert losses(home, "model@v2") == straight


def test_token_ids_outside_the_vocabulary_are_refused(home: Path, gpt2):
    train = Store(home).resolve("tokens").file("train.bin")
    shard = TokenShard.open(train)
    tokens = np.memmap(train, dtype=shard.dtype, mode="r+", offset=HEADER.size, shape=(shard.count,))
    tokens[1234] = 450  # the vocabulary has 400 tokens
    tokens.flush()
    del tokens
    result = gpt2("pretrain", *FAST, "--max-steps", "2")
    assert result.code == 1 and "Traceback" not in result.err
    assert f"gpt2: error: {train}: token 1234 is id 450, outside the vocabulary of 400 tokens" in result.err


# -- gc and training runs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tokens_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokens_home plus two 5-step runs: model@v1 from one, model@v2 from another (another seed)."""
    home = tmp_path_factory.mktemp("two-runs") / "home"
    shutil.copytree(tokens_home, home)
    for seed in ("1", "2"):
        result = run_cli(home, "pretrain", *FAST, "--max-steps", "5", "--lr-decay-steps", "10", "--seed", seed)
        assert result.returncode == 0, result.stderr
    return home


def _runs_of(home: Path) -> tuple[Path, Path]:
    """The run directories of model@v1 and model@v2 (by the run id their summaries record)."""
    first, second = (Path(Artifact.open(home / "model" / v).summary["run_dir"]).name for v in ("v1", "v2"))
    return home / "model" / ".runs" / first, home / "model" / ".runs" / second


@pytest.fixture
def runs_home(two_runs: Path, home: Path) -> Path:
    shutil.copytree(two_runs, home, dirs_exist_ok=True)
    return home


def test_gc_deletes_the_training_run_of_models_that_are_gone(runs_home: Path, gpt2):
    """A run's checkpoints, metrics and TensorBoard events go with its last model version; a kept model keeps its
    run, and `report` still reads its curve."""
    from gpt2cli.summary import run_summary

    home = runs_home
    old, new = _runs_of(home)
    assert old != new and old.is_dir() and new.is_dir()
    dry = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--dry-run", "--json").out)
    assert [r["ref"] for r in dry["removed"]] == ["model@v1"]
    assert [(r["id"], r["models"]) for r in dry["runs"]["removed"]] == [(old.name, ["model@v1"])]
    assert [(r["id"], r["reason"]) for r in dry["runs"]["kept"]] == [(new.name, "model")]
    assert dry["runs"]["removed"][0]["bytes"] > 0 and old.is_dir()  # a dry run deletes nothing
    result = gpt2("artifacts", "gc", "--keep", "1")
    assert result.code == 0, result.err
    assert f"deleted training run {old.name} (" in result.out and "1 training runs" in result.out
    assert not old.exists() and new.is_dir() and (new / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (home / "model" / ".runs").iterdir()) == [new.name]  # no trash left
    summary = run_summary(Store(home))
    assert summary["model"] == "model@v2" and [step for step, _ in summary["val_loss_curve"]] == [5.0]
    again = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--json").out)
    assert again["runs"]["removed"] == [] and new.is_dir()


def test_gc_keeps_every_run_while_a_model_manifest_is_damaged(runs_home: Path, gpt2):
    """A model version whose manifest does not read may come from any run: none is deleted, and gc says why."""
    old, new = _runs_of(runs_home)
    (runs_home / "model" / "v2" / "manifest.json").write_text("{")
    dry = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--dry-run", "--json").out)
    assert dry["runs"]["removed"] == []  # model@v1 is now the newest that reads: its run stays as a model's
    assert sorted((r["id"], r["reason"]) for r in dry["runs"]["kept"]) == sorted([(old.name, "model"),
                                                                                  (new.name, "damaged")])  # fmt: skip
    assert "a model version whose manifest is damaged" in gpt2("artifacts", "gc", "--keep", "1").out
    assert old.is_dir() and new.is_dir()


def test_gc_keeps_unfinished_runs_and_reports_them(runs_home: Path, gpt2, caplog: pytest.LogCaptureFixture):
    """A run that published nothing yet, or went on past what it published, is resumable work: kept, and named
    with its size; refresh's gc does the same. Once it is finished, it goes like any other."""
    from gpt2cli.refresh import _collect

    home = runs_home
    old, _ = _runs_of(home)
    extended = old / "step-00000010"  # extending the run to 10 steps was killed after its checkpoint at step 10
    shutil.copytree(old / "step-00000005", extended)
    never = old.with_name("0123456789abcdef")  # a run killed before it published anything
    shutil.copytree(old, never, ignore=shutil.ignore_patterns("published.jsonl", ".lock"))
    with caplog.at_level("INFO", logger="gpt2cli"):
        _collect(Store(home), 1)
    assert not (home / "model" / "v1").exists() and old.is_dir() and never.is_dir()
    logged = caplog.text
    assert f"kept training run {old.name} (" in logged and "unfinished (step 10), `gpt2 pretrain --resume`" in logged
    assert f"kept training run {never.name} (" in logged
    result = gpt2("artifacts", "gc", "--keep", "1")
    assert result.code == 0, result.err
    for run in (old, never):
        assert f"kept training run {run.name} (" in result.out and run.is_dir()
    assert "unfinished (step 10), `gpt2 pretrain --resume` continues it" in result.out
    kept = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--json").out)["runs"]["kept"]
    assert {(r["id"], r["reason"], r["checkpoint_step"]) for r in kept if r["reason"] != "model"} == {
        (old.name, "unfinished", 10),
        (never.name, "unfinished", 10),
    }
    shutil.rmtree(extended)  # the run ends where it published model@v1, gone: nothing of it is needed any more
    result = gpt2("artifacts", "gc", "--keep", "1")
    assert f"deleted training run {old.name} (" in result.out and not old.exists() and never.is_dir()


def test_gc_keeps_a_run_whose_lock_another_process_holds(runs_home: Path, gpt2):
    """A pretrain holds its run's lock while it trains: gc neither deletes that run nor waits for it."""
    home = runs_home
    old, _ = _runs_of(home)
    args = ["pretrain", *FAST, "--max-steps", "100000", "--lr-decay-steps", "10", "--seed", "1"]  # model@v1's run, on
    trainer = start(home, *args, "--checkpoint-every", "100000", "--eval-every", "100000", quiet=True)
    try:
        deadline = time.time() + 120
        while (old / ".lock").read_text().split("\n")[0] != str(trainer.pid):
            assert trainer.poll() is None and time.time() < deadline
            time.sleep(0.05)
        dry = json.loads(gpt2("artifacts", "gc", "--keep", "1", "--dry-run", "--json").out)
        assert dry["runs"]["removed"] == []
        assert (old.name, "training") in {(r["id"], r["reason"]) for r in dry["runs"]["kept"]}
        result = gpt2("artifacts", "gc", "--keep", "1")
        assert result.code == 0, result.err
        assert "deleted model@v1" in result.out and f"kept training run {old.name} (" in result.out
        assert "a pretrain is training in it" in result.out and old.is_dir()
        assert trainer.poll() is None  # it trains on
    finally:
        trainer.kill()
        trainer.wait()
    result = gpt2("artifacts", "gc", "--keep", "1")  # model@v1 went in the gc before; killed, the run saved nothing new
    assert f"deleted training run {old.name} (" in result.out and not old.exists()


def test_a_pretrain_that_waited_for_a_run_gc_deleted_locks_the_new_one(tmp_path: Path, caplog):
    """gc deletes a run directory with its lock file while holding the lock: a pretrain waiting on that file then
    gets the lock of a deleted file, and must lock the one at the path instead."""
    from gpt2cli.artifacts import hold_lock

    run_dir = tmp_path / "0123456789abcdef"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("")
    gc = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, shutil, sys\nrun = sys.argv[1]\n"
         "fd = os.open(run + '/.lock', os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\n"
         "sys.stdin.readline()\nos.rename(run, run + '-trash')\nshutil.rmtree(run + '-trash')", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert gc.stdin is not None and gc.stdout is not None and gc.stdout.readline() == "locked\n"
    held = []

    def pretrain() -> None:
        with hold_lock(run_dir / ".lock", "training run x", wait=True):
            held.append((run_dir / ".lock").read_text().split("\n")[0])  # fcntl: reading it drops the lock; fine here

    with caplog.at_level("INFO", logger="gpt2cli"):
        waiter = threading.Thread(target=pretrain)
        waiter.start()
        deadline = time.time() + 30
        while "waiting for training run x" not in caplog.text:
            assert time.time() < deadline
            time.sleep(0.01)
        gc.stdin.write("go\n")
        gc.stdin.flush()
        assert gc.wait(timeout=30) == 0
        waiter.join(timeout=30)
    assert not waiter.is_alive() and "was deleted while this run waited for it" in caplog.text
    assert held == [str(os.getpid())]  # it locked (and wrote its pid into) the file at the path, not the deleted one


# -- batches ---------------------------------------------------------------------------------------------------


def _shard(path: Path, tokens: np.ndarray) -> TokenShard:
    from gpt2cli.bpe.shards import _ShardWriter

    writer = _ShardWriter(path, 400, 0)
    writer.write(tokens)
    writer.finish()
    return TokenShard.open(path)


def test_a_shard_of_one_window_trains_and_longer_shards_keep_their_data_order(tmp_path: Path):
    """seq_len + 1 tokens hold one sequence and its targets; a shard one token shorter is refused, saying so. The
    windows of longer shards stay those every seed drew before (a resumed run keeps its data order)."""
    from gpt2cli.errors import Gpt2Error
    from gpt2cli.train.data import Batches

    tokens = np.arange(64) % 400
    one = Batches(_shard(tmp_path / "one.bin", tokens), seq_len=63, micro_batch=2, seed=1)
    (x, y), *_ = one.train_step(0, accum=1, rank=0, world=1)
    assert x.tolist() == [tokens[:63].tolist()] * 2 and y.tolist() == [tokens[1:].tolist()] * 2
    with pytest.raises(Gpt2Error, match=r"holds 63 tokens, fewer than one sequence of 63 \+ 1"):
        Batches(_shard(tmp_path / "short.bin", tokens[:63]), seq_len=63, micro_batch=2, seed=1)
    longer = Batches(_shard(tmp_path / "longer.bin", np.arange(1000) % 400), seq_len=63, micro_batch=2, seed=7)
    drawn = np.random.default_rng([7, 3]).integers(0, 1000 - 63 - 1, size=16)
    assert longer.starts((3,), 16).tolist() == drawn.tolist()


@pytest.mark.parametrize("count", [1, 3, 4])
def test_every_process_evaluates_as_many_batches_and_together_exactly_the_held_out_ones(tmp_path: Path, count: int):
    """Under FSDP each forward pass gathers the weights from every process: a process with fewer batches would
    leave the others waiting forever. The counted batches of 2 processes are those of 1."""
    from gpt2cli.train.data import Batches

    batches = Batches(_shard(tmp_path / "val.bin", np.arange(1000) % 400), seq_len=16, micro_batch=2, seed=0)
    alone = batches.eval_batches(count, 0, 1)
    assert len(alone) == count and all(counted for *_, counted in alone)
    shares = [batches.eval_batches(count, rank, 2) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == (count + 1) // 2
    interleaved = [batch for pair in zip(*shares, strict=True) for batch in pair]
    assert [x.tolist() for x, _, counted in interleaved if counted] == [x.tolist() for x, _, _ in alone]


def ranks(home: Path, *args: str) -> list[tuple[int, str]]:
    """`gpt2 ARGS` as the 2 processes torchrun starts (its environment, gloo on the CPU): each one's exit code and
    stderr. torchrun itself exits 1 when a process fails, and stops the other one, whatever its exit code."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GPT2_HOME": str(home), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gpt2cli", *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_every_process_exits_alike_and_a_shared_error_is_said_once(home: Path):
    """A run lock held elsewhere is seen by rank 0 alone: the other process exits 75 with it, not with a traceback of
    a collective cut short, and leaves the saying to rank 0."""
    args = ["pretrain", *FAST, "--max-steps", "100000", "--checkpoint-every", "100000", "--eval-every", "100000"]
    holder = start(home, *args, quiet=True)
    try:
        deadline = time.time() + 120
        while not any(p.read_text().split("\n")[0] == str(holder.pid) for p in home.glob("model/.runs/*/.lock")):
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.05)
        (code_0, err_0), (code_1, err_1) = ranks(home, *args)
    finally:
        holder.kill()
        holder.wait()
    assert (code_0, code_1) == (75, 75), err_0 + err_1
    assert err_0.count("gpt2: error: another run holds training run") == 1 and "Traceback" not in err_0
    assert "error" not in err_1.lower() and "Traceback" not in err_1
    # an error of each process's own (a bad setting here; a file missing on one node): each says it, naming its rank
    (code_0, err_0), (code_1, err_1) = ranks(home, "pretrain", *FAST, "--seq-len", "256")
    assert (code_0, code_1) == (2, 2) and "longer than the model's context" in err_0 and "(rank" not in err_0
    assert err_1.count("gpt2: error:") == 1 and "longer than the model's context" in err_1 and "(rank 1)" in err_1
