from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console

from gpt2cli import cli
from gpt2cli import model as model_module
from gpt2cli import sample as sample_module
from gpt2cli.artifacts import Store
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import UsageError
from gpt2cli.model import GPT, GPTConfig, NotFinite, logits_needed, sample_next
from gpt2cli.sample import SampleOptions, Sampler, stop_string
from tests.conftest import run_cli, save_model_dir


@pytest.fixture(scope="module")
def random_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=24, vocab_size=60)).eval()


def test_greedy_with_cache_equals_without(random_model: GPT):
    prompt = torch.randint(0, 60, (3, 5))
    # 40 new tokens: past the 24-token context, so the sliding window is exercised too
    cached = random_model.generate(prompt, 40, temperature=0)
    plain = random_model.generate(prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape == (3, 45)


def test_sampling_with_cache_equals_without(random_model: GPT):
    prompt = torch.randint(0, 60, (2, 3))
    a = random_model.generate(prompt, 15, top_k=10, generator=torch.Generator().manual_seed(3))
    b = random_model.generate(prompt, 15, top_k=10, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_samples_of_one_prompt_share_its_prefill(random_model: GPT):
    prompt = torch.randint(0, 60, (1, 6))
    shapes = []

    def forward(idx: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        shapes.append(tuple(idx.shape))
        return random_model(idx, *args, **kwargs)

    many = random_model.generate(prompt.repeat(4, 1), 5, top_k=10, generator=torch.Generator().manual_seed(1),
                                 forward=forward)  # fmt: skip
    assert shapes == [(1, 6)] + [(4, 1)] * 4  # the prompt once, then every row
    assert len({tuple(row) for row in many[:, 6:].tolist()}) > 1  # each row draws its own tokens
    plain = random_model.generate(prompt.repeat(4, 1), 5, top_k=10, generator=torch.Generator().manual_seed(1),
                                  use_cache=False)  # fmt: skip
    assert torch.equal(many, plain)
    greedy = random_model.generate(prompt.repeat(3, 1), 8, temperature=0)
    assert torch.equal(greedy, random_model.generate(prompt, 8, temperature=0).repeat(3, 1))


def test_generate_allocates_the_cache_it_needs(random_model: GPT, monkeypatch: pytest.MonkeyPatch):
    lengths = []

    class RecordingCache(model_module.KVCache):
        def __init__(self, config: GPTConfig, length: int | None = None):
            super().__init__(config, length)
            lengths.append(self.layers[0].length)

    monkeypatch.setattr(model_module, "KVCache", RecordingCache)
    prompt = torch.randint(0, 60, (2, 5))
    short = random_model.generate(prompt, 3, temperature=0)
    long = random_model.generate(prompt, 40, temperature=0)  # past the 24-token context: a sliding window
    assert lengths == [8, 24] and short.shape == (2, 8) and long.shape == (2, 45)
    assert torch.equal(long[:, :8], short)


def test_generate_through_a_compiled_module(random_model: GPT):
    """`gpt2 sample --compile` passes torch.compile's module as ``forward`` (dynamo only here: fast)."""
    prompt = torch.randint(0, 60, (2, 4))
    compiled = torch.compile(random_model, backend="eager", dynamic=True)
    with torch.inference_mode():
        assert torch.equal(random_model.generate(prompt, 6, temperature=0, forward=compiled),
                           random_model.generate(prompt, 6, temperature=0))  # fmt: skip


def test_greedy_equals_hugging_face_generate(random_model: GPT, tmp_path: Path):
    transformers = pytest.importorskip("transformers", reason="transformers (a dev dependency) is the reference")
    random_model.save(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompt = torch.randint(0, 60, (8, 4), generator=torch.Generator().manual_seed(1))
    ours = random_model.generate(prompt, 16, temperature=0)
    mask = torch.ones_like(prompt)  # without it, transformers takes prompt tokens equal to pad_token_id for padding
    theirs = hf.generate(prompt, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0,
                         eos_token_id=None)  # fmt: skip
    for row in range(len(prompt)):
        differ = (ours[row] != theirs[row]).nonzero()
        if len(differ):  # allowed only where the two best logits tie within float error
            at = int(differ[0])
            with torch.no_grad():
                best = torch.topk(random_model(ours[row : row + 1, :at])[0, -1], 2).values
            assert float(best[0] - best[1]) < 1e-4, f"row {row} differs from HF at {at} without a tie"
    assert sum(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)) >= 6


def test_top_k_and_top_p_never_leave_the_allowed_set():
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 3
    probs = torch.softmax(logits, -1)[0]
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    order = torch.argsort(probs, descending=True).tolist()
    nucleus, mass = set(), 0.0
    for i in order:  # the smallest set of most likely tokens reaching 0.6
        nucleus.add(i)
        mass += probs[i].item()
        if mass >= 0.6:
            break
    many = logits.expand(6000, -1)
    generator = torch.Generator().manual_seed(0)
    for top_k, top_p, allowed in ((5, None, top5), (None, 0.6, nucleus), (5, 0.6, top5 & nucleus)):
        draws = set(sample_next(many, 1.0, top_k, top_p, generator).tolist())
        assert draws == allowed  # never outside the allowed set, and every allowed token occurs
    assert set(sample_next(many, 1.0, None, 1e-9, generator).tolist()) == {int(logits.argmax())}
    assert set(sample_next(many, 0.0, 5, None, generator).tolist()) == {int(logits.argmax())}  # greedy
    frequent = torch.bincount(sample_next(many, 1.0, 3, None, generator), minlength=50).float() / 6000
    top3 = torch.topk(logits[0], 3).indices
    expected = torch.softmax(logits[0, top3], -1)
    assert torch.allclose(frequent[top3], expected, atol=0.03)  # renormalized over the kept tokens


def test_top_k_keeps_ties_with_the_kth_and_ignores_what_lies_below_it():
    logits = torch.tensor([[5.0, 3.0, 1.0, 3.0, 3.0, 0.5, 2.0]])
    many = logits.expand(4000, -1)
    draws = set(sample_next(many, 1.0, 2, None, torch.Generator().manual_seed(0)).tolist())
    assert draws == {0, 1, 3, 4}  # the three tied at the 2nd-largest value stay, as in transformers
    # what a screened head returns: -inf below each row's k-th largest; the draws are the same, token for token
    rows = torch.randn(64, 500, generator=torch.Generator().manual_seed(1)).round(decimals=1)  # many ties
    for k, temperature, top_p in ((1, 1.0, None), (7, 0.7, None), (40, 1.3, 0.9)):
        kth = rows.topk(k, dim=-1).values[:, -1:]
        screened = torch.where(rows >= kth - 0.15, rows, float("-inf"))  # some below the k-th stay, as in head.c
        draws = [sample_next(x, temperature, k, top_p, torch.Generator().manual_seed(2)) for x in (rows, screened)]
        assert torch.equal(draws[0], draws[1])
    assert logits_needed(0.0, None) == 1 and logits_needed(1.0, 40) == 40
    assert logits_needed(1.0, None) is None and logits_needed(1e-4, 40) is None  # the division could underflow


def test_generate_rejects_bad_options(random_model: GPT):
    prompt = torch.zeros(1, 1, dtype=torch.long)
    for kwargs in ({"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}, {"top_k": 0}, {"top_k": 2.5}):
        with pytest.raises(UsageError):
            random_model.generate(prompt, 2, **kwargs)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 0, got -2"):
        random_model.generate(prompt, -2)
    # what the library is handed, named in its own words rather than an embedding's or an unpacking's error
    bad_prompts = {
        "shape (3,)": torch.tensor([1, 2, 3]),
        "shape (1, 0)": torch.zeros(1, 0, dtype=torch.long),
        "shape (1, 1, 1)": torch.zeros(1, 1, 1, dtype=torch.long),
        "integer dtype, got torch.float32": torch.zeros(1, 2),
        "holds 60, outside the vocabulary 0..59": torch.tensor([[1, 60]]),
        "holds -1, outside": torch.tensor([[-1, 2]]),
    }
    for message, idx in bad_prompts.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            random_model.generate(idx, 2)
    small = random_model.generate(torch.tensor([[1, 2]], dtype=torch.int32), 2, temperature=0)
    assert small.dtype == torch.long and small[:, :2].tolist() == [[1, 2]]
    # integers of other kinds are integers: NumPy's, a 0-dim tensor
    import numpy as np

    other = random_model.generate(torch.tensor([[1, 2]]), np.int64(2), top_k=torch.tensor(1))
    assert other.tolist() == small.tolist()


def test_stop_ids_finish_rows(random_model: GPT):
    prompt = torch.randint(0, 60, (4, 3))
    first = random_model.generate(prompt, 1, temperature=0)[:, -1].tolist()
    out = random_model.generate(prompt, 10, temperature=0, stop_ids=[first[0]])
    assert (out[0, 3:] == first[0]).all()  # row 0 stopped at once and is padded with the stop id


def test_sample_cli_seed_json_and_stop(model_home: Path):
    args = ["sample", "--prompt", "The council", "--max-new-tokens", "20", "--seed", "5", "--json"]
    a, b = run_cli(model_home, *args), run_cli(model_home, *args)
    assert a.returncode == 0, a.stderr
    sample = json.loads(a.stdout)
    assert sample["text"] == json.loads(b.stdout)["text"]  # same seed, same options, same text
    assert sample["prompt"] == "The council" and sample["seed"] == 5 and sample["new_tokens"] <= 20
    assert sample["prompt_tokens"] > 1 and sample["tokens_per_s"] > 0
    other = json.loads(run_cli(model_home, *args[:-3], "--seed", "6", "--json").stdout)
    assert other["text"] != sample["text"]
    several = run_cli(model_home, "sample", "-n", "3", "--max-new-tokens", "8", "--seed", "1", "--json")
    rows = [json.loads(line) for line in several.stdout.splitlines()]
    assert len(rows) == 3 and all(r["prompt"] == "" and r["prompt_tokens"] == 1 for r in rows)  # from <|eot|>
    text = sample["text"]
    assert len(text) > 4
    stop = text[2:4]
    stopped = run_cli(model_home, *args, "--stop", stop)
    assert stopped.returncode == 0, (stop, stopped.stderr)
    cut = json.loads(stopped.stdout)
    assert cut["stopped"] == "stop" and cut["text"] == text[: text.find(stop)]


def test_greedy_temperature_zero_and_stdin(model_home: Path):
    # echo's final line break ends the line, not the prompt: the model continues "A library"
    greedy = run_cli(model_home, "sample", "--greedy", "--max-new-tokens", "12", "--json", input="A library\n")
    zero = run_cli(model_home, "sample", "--temperature", "0", "--max-new-tokens", "12", "--json", "--seed", "9",
                   input="A library")  # fmt: skip
    assert greedy.returncode == 0, greedy.stderr
    assert json.loads(greedy.stdout)["text"] == json.loads(zero.stdout)["text"]  # temperature 0 means greedy
    assert json.loads(greedy.stdout)["prompt"] == "A library"


def test_interactive_reads_prompt_after_prompt(model_home: Path):
    result = run_cli(model_home, "sample", "-i", "--max-new-tokens", "4", "--json", input="one\r\ntwo\nthree")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["prompt"] for line in result.stdout.splitlines()] == ["one", "two", "three"]


def test_interactive_prompts_go_to_the_terminal_and_a_line_may_end_with_ctrl_d(model_home: Path):
    """`gpt2 sample -i > samples.txt`: the "> " prompts are the terminal's, not the file's. A line ended by Ctrl-D
    instead of Enter is read whole (Python's input() drops its last character there)."""
    import pty

    primary, secondary = pty.openpty()
    env = {**os.environ, "GPT2_HOME": str(model_home), "OMP_NUM_THREADS": "1"}
    args = ["sample", "-i", "--max-new-tokens", "3", "--seed", "1", "--json"]
    child = subprocess.Popen([sys.executable, "-m", "gpt2cli", *args], stdin=secondary, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip
    os.close(secondary)
    os.write(primary, b"Hel\x04\x04\x04")  # "Hel", Ctrl-D to send it, Ctrl-D to end it, Ctrl-D to end the input
    out, err = child.communicate(timeout=300)
    os.close(primary)
    assert child.returncode == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["Hel"]
    assert err.count("> ") == 2


def test_a_prompt_file_is_its_text(model_home: Path, tmp_path: Path):
    """Without the byte-order mark a Windows editor writes, and without the final line break every editor adds."""
    prompt = tmp_path / "prompt.txt"
    for data, expected in ((b"\xef\xbb\xbfHello\r\n", "Hello"), (b"Q: who?\nA:\n\n", "Q: who?\nA:\n")):
        prompt.write_bytes(data)
        result = run_cli(model_home, "sample", "--prompt-file", str(prompt), "--max-new-tokens", "2", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["prompt"] == expected
    several = run_cli(model_home, "sample", "--prompt", "A", "-n", "2", "--max-new-tokens", "2")
    rules = [line for line in several.stdout.splitlines() if "sample 2" in line]
    assert len(rules) == 1 and len(rules[0]) == 80  # in a file, a rule as wide as a line of text


def test_bad_input_is_a_clear_error(model_home: Path, tmp_path: Path):
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"\xef\xbb\xbfcaf\xe9")  # the byte is named by its offset in the file, mark included
    result = run_cli(model_home, "sample", "--prompt-file", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("prompt.txt is not UTF-8 (byte 6: b'\\xe9')")
    result = run_cli(model_home, "sample", "--top-p", "1.5")
    assert result.returncode == 2 and "--top-p must be in (0, 1]" in result.stderr
    result = run_cli(model_home, "sample", "model@v9")
    assert result.returncode == 2 and "model versions: v1" in result.stderr
    long_prompt = "word " * 400  # longer than the tiny model's 128-token context
    result = run_cli(model_home, "sample", "--prompt", long_prompt, "--max-new-tokens", "3", "--json")
    assert result.returncode == 0 and "longer than the context (128)" in result.stderr
    assert json.loads(result.stdout)["prompt_tokens"] == 128
    tokenizer = Tokenizer.load(Store(model_home).resolve("model").path)
    full = tokenizer.decode(tokenizer.encode(long_prompt)[:128])
    assert len(tokenizer.encode(full)) == 128
    result = run_cli(model_home, "sample", "--prompt", full, "--max-new-tokens", "3", "--json")
    assert result.returncode == 0 and "longer" not in result.stderr  # a prompt the size of the context fits it
    assert json.loads(result.stdout)["prompt_tokens"] == 128


def test_sample_from_a_hugging_face_directory(model_home: Path, tmp_path: Path):
    out = tmp_path / "hf"
    assert run_cli(model_home, "export", "model", "--out", str(out)).returncode == 0
    from_dir = Sampler(out, Store(model_home), SampleOptions(max_new_tokens=6, temperature=0, dtype="float32"))
    from_ref = Sampler("model", Store(model_home), SampleOptions(max_new_tokens=6, temperature=0, dtype="float32"))
    assert from_dir.generate("The")[0].text == from_ref.generate("The")[0].text


def test_prompt_bytes_that_are_not_utf8_are_usage_errors(gpt2, model_home: Path, monkeypatch: pytest.MonkeyPatch):
    """Python hands such argv and terminal bytes over as surrogate escapes, which used to reach stdout raw."""
    base = ["sample", "--home", str(model_home), "--max-new-tokens", "3", "--seed", "1", "--json"]
    result = gpt2(*base, "--prompt", "caf\udce9")  # what argv holds for the bytes caf\xe9
    assert result.code == 2 and result.out == ""
    assert result.err.strip() == "gpt2: error: the prompt in --prompt is not UTF-8 (byte 3: b'\\xe9')"
    # -i: the bad line is reported, the others are answered, and the exit code tells a script that one failed
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ncaf\xe9\ntwo\n"), encoding="utf-8"))
    result = gpt2(*base, "-i")
    assert result.code == 2
    assert [json.loads(line)["prompt"] for line in result.out.splitlines()] == ["one", "two"]
    assert result.err.strip() == "gpt2: error: the prompt in input line 2 is not UTF-8 (byte 3: b'\\xe9')"


def test_a_batch_that_does_not_fit_in_memory_is_one_line(gpt2, model_home: Path, monkeypatch: pytest.MonkeyPatch):
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: ...")

    monkeypatch.setattr(GPT, "generate", out_of_memory)
    result = gpt2("sample", "--home", str(model_home), "-n", "1000", "--max-new-tokens", "2", "--prompt", "A")
    assert result.code == 1 and result.err.startswith("gpt2: error: not enough memory for 1,000 samples")
    assert result.err.strip().endswith("ask for fewer with --num-samples") and result.err.count("\n") == 1


def test_what_is_not_a_model_or_is_damaged_is_one_line(gpt2, model_home: Path, tmp_path: Path):
    """`sample` and `eval zero-shot` load through GPT.load: another kind is a usage error, a damaged file exit 1."""
    home = ["--home", str(model_home)]
    for command in (["sample", "--prompt", "x"], ["eval", "zero-shot"]):
        result = gpt2(*command, *home, "tokenizer")
        assert (
            result.code == 2
            and result.err.strip() == "gpt2: error: tokenizer@v1 is a 'tokenizer' artifact, not a model"
        )
        result = gpt2(*command, *home, str(model_home / "tokens" / "v1"))
        assert result.code == 2 and "tokens@v1 is a 'tokens' artifact, not a model" in result.err
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "data" / "ptb").mkdir(parents=True)
    (tmp_path / "data" / "ptb" / "ptb.test.txt").write_text(" the cat sat on the mat \n")  # the model loads after
    evaluate = ["eval", "zero-shot", "--task", "ptb", "--data-dir", str(tmp_path / "data"), "--source", "local"]
    for command in (["sample", "--prompt", "x"], evaluate):
        result = gpt2(*command, *home, str(tmp_path))
        assert (
            result.code == 1 and result.err.strip() == f"gpt2: error: {tmp_path}/config.json: the config lacks 'n_embd'"
        )


def test_a_model_artifact_whose_weights_changed_is_not_loaded(gpt2, model_home: Path, tmp_path: Path):
    """A flipped byte in a tensor loads as another model: sample, eval and export check the manifest first."""
    home = tmp_path / "home"
    shutil.copytree(model_home, home)
    weights = home / "model" / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor
    weights.write_bytes(bytes(data))
    for command in (["sample", "--prompt", "x"], ["export", "model", "--out", str(tmp_path / "hf")]):
        result = gpt2(*command, "--home", str(home))
        assert result.code == 1, result.err
        assert result.err.strip() == f"gpt2: error: {weights} is damaged: its sha256 differs from the artifact's " \
            "manifest (`gpt2 artifacts verify` checks every file)"  # fmt: skip
    assert not (tmp_path / "hf").exists()


def test_option_values_without_a_meaning_are_usage_errors(gpt2, model_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    base = ["sample", "--home", str(model_home), "--prompt", "x", "--max-new-tokens", "3"]
    for option, value, message in (
        ("--temperature", "nan", "--temperature must be a finite number >= 0"),
        ("--temperature", "inf", "--temperature must be a finite number >= 0"),
        ("--seed", "99999999999999999999999", "--seed must be in 0..9223372036854775807"),
        ("--seed", "-1", "--seed must be in 0..9223372036854775807"),
        ("--device", "bogus", "unknown --device 'bogus'"),
        ("--device", "cuda", "--device cuda: no CUDA device is available"),
        ("--dtype", "bogus", "unknown --dtype 'bogus'; choose from auto, float32, bfloat16"),
        ("--num-samples", "1025", "--num-samples must be at most 1,024 (generated as one batch), got 1,025"),
        ("--num-samples", "99999999999999999999", "--num-samples must be at most 1,024"),  # was an OverflowError
    ):
        result = gpt2(*base, option, value)
        assert result.code == 2 and result.err.startswith(f"gpt2: error: {message}"), (option, value, result.err)
        assert len(result.err.splitlines()) == 1
    assert gpt2(*base, "--seed", str(2**63 - 1)).code == 0


def test_tiny_temperatures_tend_to_greedy(gpt2, model_home: Path, random_model: GPT):
    """logits / 1e-45 overflow to inf and softmax to nan, and 5e-324 is 0 in float32 (0 / 0 is nan): the row's
    maximum is subtracted first, and the division made in float64."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, -1.0]]).expand(2000, -1)
    for temperature in (5e-324, 1e-45, 2**-11):
        draws = set(sample_next(logits, temperature, None, None, torch.Generator().manual_seed(0)).tolist())
        assert draws == {1, 3}  # the two tied at the maximum, nothing else
        assert set(sample_next(logits, temperature, 2, 0.9, torch.Generator().manual_seed(0)).tolist()) <= {1, 3}
    for temperature in (2.0**11, 1e300):  # huge: every token about as likely
        assert set(sample_next(logits, temperature, None, None, torch.Generator().manual_seed(0)).tolist()) == set(
            range(5)
        )
    base = ["sample", "--home", str(model_home), "--prompt", "The council", "--max-new-tokens", "12", "--json"]
    greedy = json.loads(gpt2(*base, "--greedy").out)["text"]
    for temperature in ("1e-45", "5e-324"):
        tiny = gpt2(*base, "--temperature", temperature, "--seed", "1")
        assert tiny.code == 0, tiny.err
        assert json.loads(tiny.out)["text"] == greedy
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        random_model.generate(torch.zeros(1, 1, dtype=torch.long), 2, temperature=float("nan"))


def test_new_tokens_count_up_to_the_stop_of_each_row(model_home: Path, monkeypatch: pytest.MonkeyPatch):
    """Rows of a batch finish at different steps; the ones that finish early are padded until the last does."""
    options = SampleOptions(max_new_tokens=40, num_samples=4, seed=1, stop=(".",), dtype="float32", device="cpu")
    sampler = Sampler("model", Store(model_home), options)
    tok, outputs = sampler.tokenizer, []
    generate = sampler.model.generate
    monkeypatch.setattr(sampler.model, "generate", lambda *a, **k: outputs.append(generate(*a, **k)) or outputs[-1])
    for stop_at_eot in (True, False):
        sampler.options = replace(options, stop_at_eot=stop_at_eot)
        samples = sampler.generate("The city council")
        start = samples[0].prompt_tokens
        for sample, row in zip(samples, outputs[-1][:, start:].tolist(), strict=True):
            if sample.stopped == "length":
                expected = len(row)
            elif sample.stopped == "eot":
                expected = row.index(tok.eot_id) + 1
            else:  # the first token after which the text holds the stop string
                expected = next(n for n in range(1, len(row) + 1) if "." in tok.decode(row[:n]))
            assert sample.new_tokens == expected, (stop_at_eot, sample)
        assert len({s.new_tokens for s in samples}) > 1  # the rows did finish at different steps
        by_length = sorted(samples, key=lambda s: s.new_tokens)  # each row's time runs to its own end, as its count
        assert [s.seconds for s in by_length] == sorted(s.seconds for s in by_length)
        assert by_length[0].seconds < by_length[-1].seconds


def test_stop_reads_backslash_escapes(gpt2, monkeypatch: pytest.MonkeyPatch):
    """A shell passes --stop "\\n\\n" as backslash, n, backslash, n; the README's example means a blank line."""
    assert stop_string(r"a\n\tb\\n\x") == "a\n\tb\\n\\x"  # other backslashes stay
    given = []

    class Recorder:
        def __init__(self, source: str, store: Store, options: SampleOptions):
            given.append(options)

        def generate(self, prompt: str, on_text: object = None) -> list[object]:
            return []

    monkeypatch.setattr(sample_module, "Sampler", Recorder)
    assert gpt2("sample", "--prompt", "x", "--stop", r"\n\n", "--stop", ".").code == 0
    assert given[0].stop == ("\n\n", ".")


def test_prompt_then_interactive_prompts(gpt2, model_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"second\n"), encoding="utf-8"))
    result = gpt2("sample", "--home", str(model_home), "-i", "--prompt", "first", "--max-new-tokens", "3", "--json")
    assert result.code == 0, result.err
    assert [json.loads(line)["prompt"] for line in result.out.splitlines()] == ["first", "second"]


def test_a_terminal_gets_the_text_a_pipe_gets(gpt2, model_home: Path, monkeypatch: pytest.MonkeyPatch):
    """On a terminal the continuation streams as it comes; the prompt comes first there too."""
    args = [
        "sample",
        "--home",
        str(model_home),
        "--prompt",
        "The city council",
        "--max-new-tokens",
        "30",
        "--seed",
        "1",
    ]
    piped = gpt2(*args)
    monkeypatch.setattr(cli, "stdout_console", lambda: Console(force_terminal=True, highlight=False))
    streamed = gpt2(*args)
    assert piped.code == streamed.code == 0, streamed.err
    assert streamed.out == piped.out and piped.out.startswith("The city council")


def test_logits_that_are_not_finite_are_an_error_not_a_token():
    """An argmax over NaN is token 0 and a draw from NaN probabilities a RuntimeError: neither is an answer."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, float("nan"), 2.0]])
    for temperature, top_k, top_p in ((0.0, None, None), (1.0, 2, None), (0.7, None, 0.9), (1e-300, None, None)):
        with pytest.raises(NotFinite, match=r"^the model's logits are not finite \(nan\): "):
            sample_next(logits, temperature, top_k, top_p, torch.Generator().manual_seed(0))
    with pytest.raises(NotFinite, match=r"not finite \(inf\)"):
        sample_next(torch.tensor([[0.0, float("inf")]]), 1.0)


def test_a_model_with_nan_weights_is_one_error_line(gpt2, tokenizer: Tokenizer, tmp_path: Path):
    model = save_model_dir(tmp_path / "diverged", tokenizer, 32, nan=True)
    for option in ("--greedy", "--top-p=0.9", "--temperature=5e-324"):
        result = gpt2("sample", model, "--prompt", "The city", "--max-new-tokens", "3", "--device", "cpu", option)
        assert (result.code, result.out) == (1, ""), option
        assert result.err == f"gpt2: error: {model}: the model's logits are not finite (nan): is it a diverged or " \
            "damaged checkpoint?\n"  # fmt: skip


def test_a_closed_pipe_found_by_rich_ends_quietly_too():
    """rich's own handler of a closed stdout exits 1 from whichever write met it (a sample's rule line): it is
    left to the command, whose reader may stop (exit 0)."""
    code = (
        "import os\nfrom gpt2cli.console import reader_may_stop, stdout_console\n"
        "r, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
        "reader_may_stop()(lambda: [stdout_console().rule(f'sample {i}') for i in range(10000)])()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_reader_that_stops_reading_ends_the_command_quietly(tokenizer: Tokenizer, tmp_path: Path):
    """`gpt2 sample -i | head -c 10`: stopping was the reader's choice, so exit 0 and no message, not click's exit 1.
    The output is larger than a pipe holds, so the command is still writing when the reader goes."""
    model = save_model_dir(tmp_path / "model", tokenizer, 128)
    env = {**os.environ, "GPT2_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    args = ["sample", model, "--device", "cpu", "-i", "-n", "16", "--max-new-tokens", "60", "--ignore-eot"]
    child = subprocess.Popen([sys.executable, "-m", "gpt2cli", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    child.stdin.write(b"The city council\n" * 100)
    child.stdin.close()
    assert len(child.stdout.read(10)) == 10
    child.stdout.close()
    assert (child.wait(timeout=120), child.stderr.read().decode()) == (0, "")
