from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gpt2cli.artifacts import Store, release_reads
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.bpe.train import count_corpus, learn_merges
from gpt2cli.cli import main
from gpt2cli.model import GPT, GPTConfig

TESTS = Path(__file__).parent
# Real public data (GPT-2's tokenizer files, WikiText, PTB, LAMBADA, Reddit dumps): ../shared/data from the
# repository root, or wherever GPT2_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("GPT2_SHARED_DATA") or TESTS.parent.parent / "shared" / "data")
SAMPLE = TESTS.parent / "data" / "sample" / "articles"
# A tiny, fast pretraining run: 4 x 32-token sequences per pass, 2 accumulation steps, 256 tokens per step.
FAST = ["--model-size", "tiny", "--seq-len", "32", "--micro-batch", "4", "--global-batch-tokens", "256",
        "--eval-every", "5", "--eval-batches", "2", "--checkpoint-every", "5", "--sample-tokens", "8",
        "--warmup-steps", "3", "--learning-rate", "3e-3", "--device", "cpu", "--dtype", "float32"]  # fmt: skip


def shared_data(*parts: str) -> Path:
    """A file or folder of ../shared/data; the test is skipped, with the reason, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real public data from ../shared/data is needed for this test")
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _release_reads() -> Iterator[None]:
    """Stages called in-process hold the versions they read until the command ends, as `gpt2` does."""
    yield
    release_reads()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Store:
    return Store(home)


@pytest.fixture
def gpt2(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run the CLI in-process with GPT2_HOME set to the test's home; returns exit code, stdout, stderr."""
    monkeypatch.setenv("GPT2_HOME", str(home))

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_module(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    """The real `gpt2` entry point in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        **kwargs,
    )


HOLD_THEN_RUN = """
import sys, time
from pathlib import Path
from gpt2cli.artifacts import Store
from gpt2cli.cli import main
home, kind, go, args = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
with Store(home).lock(kind):
    print("locked", flush=True)
    while not go.exists():
        time.sleep(0.05)
    main(["--home", home, *args])
"""


def run_queued_behind(home: Path, kind: str, first: list[str], queued: list[str]) -> tuple[int, str, str]:
    """``first`` run by a process that took the lock of ``kind`` beforehand, and ``queued`` (with --wait) started
    while it holds it: once ``queued`` is seen waiting, ``first`` goes on. The queued run's exit code, stdout and
    the rest of its stderr."""
    env = {**os.environ, "GPT2_HOME": str(home), "OMP_NUM_THREADS": "1"}
    go = home.parent / f"go-{kind}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_RUN, str(home), kind, str(go), *first], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    waiting = subprocess.Popen([sys.executable, "-m", "gpt2cli", *queued, "--wait"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert waiting.stderr is not None
    for line in waiting.stderr:  # it reached the lock
        if f"waiting for the lock on '{kind}'" in line:
            break
    go.touch()
    assert holder.wait(timeout=300) == 0
    out, err = waiting.communicate(timeout=300)
    return waiting.returncode, out, err


def run_cli(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """`python -m gpt2cli ARGS` in a child process with GPT2_HOME=home."""
    env = {**os.environ, "GPT2_HOME": str(home), "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "gpt2cli", *args], env=env, capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.fixture(scope="session")
def tokens_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with a tokenizer (400 tokens) and a tokens artifact of the sample, built once per session."""
    home = tmp_path_factory.mktemp("tokens-home")
    for args in (
        ["train-bpe", "--input", str(SAMPLE), "--vocab-size", "400"],
        ["tokenize", "--input", str(SAMPLE), "--val-fraction", "0.2"],
    ):
        result = run_cli(home, *args)
        assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="session")
def model_home(tokens_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokens_home plus a briefly trained tiny model artifact (read-only for tests)."""
    import shutil

    home = tmp_path_factory.mktemp("model-home") / "home"
    shutil.copytree(tokens_home, home)
    result = run_cli(home, "pretrain", *FAST, "--max-steps", "30")
    assert result.returncode == 0, result.stderr
    return home


# -- a small tokenizer and threads for the tests of tiny models ------------------------------------------


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """The embedded sample's articles."""
    return [p.read_text(encoding="utf-8") for p in sorted(SAMPLE.glob("*.txt"))]


@pytest.fixture(scope="session")
def tokenizer(texts: list[str]) -> Tokenizer:
    """A 200-merge BPE of the sample: real merges, small enough for tiny models."""
    return Tokenizer.from_merges(learn_merges(count_corpus(texts, workers=1), 200))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine threads that wait on each other cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt(vocab_size: int, n_ctx: int, seed: int = 0) -> GPT:
    """A seeded 2-layer random model: enough to compare a scorer or decoder with a plain computation."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=n_ctx, vocab_size=vocab_size)).eval()


def save_model_dir(directory: Path, tokenizer: Tokenizer, n_ctx: int, *, nan: bool = False) -> str:
    """A directory in Hugging Face's layout (config, weights, tokenizer files) holding ``tiny_gpt``, for `gpt2 sample`
    and `gpt2 eval`; ``nan``: its final LayerNorm weight is NaN, as a diverged checkpoint's weights are."""
    model = tiny_gpt(tokenizer.vocab_size, n_ctx)
    if nan:
        with torch.no_grad():
            model.transformer.ln_f.weight.fill_(float("nan"))
    model.save(directory)
    tokenizer.save(directory)
    return str(directory)


def greedy_first_line(model: GPT, tokenizer: Tokenizer, prompt: str, n_ctx: int, max_new: int) -> tuple[str, bool]:
    """Greedy argmax over full forward passes (no cache), until a newline or <|endoftext|>: the first line of
    the continuation, stripped, and whether a newline ended it. The plain reference for generation tasks."""
    ids = tokenizer.encode(prompt)[-(n_ctx - max_new) :]
    new: list[int] = []
    for _ in range(max_new):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
        if token == tokenizer.eot_id:
            break
        new.append(token)
        if "\n" in tokenizer.decode(new):
            return tokenizer.decode(new).split("\n")[0].strip(), True
    return tokenizer.decode(new).split("\n")[0].strip(), False
