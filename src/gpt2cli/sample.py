"""`gpt2 sample`: text from a model artifact or a Hugging Face GPT-2 directory.

Defaults follow the paper's samples: top-k with k = 40. An empty prompt starts from <|endoftext|>
(unconditional samples); generation stops at <|endoftext|> unless told otherwise.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2cli.artifacts import Store
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.model import GPT, NotFinite, fast_dtype, model_directory

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1  # a signed 64-bit integer, as other tools (and JSON readers in many languages) store seeds
MAX_SAMPLES = 1024  # samples of one prompt, generated together as one batch
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def stop_string(text: str) -> str:
    """A --stop value with \\n, \\t and \\\\ read as newline, tab and backslash: a shell passes "\\n\\n" literally.
    Any other backslash stays as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a device this machine lacks is a usage
    error here rather than a PyTorch error at the first tensor moved to it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown --device {name!r}; choose from auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


@dataclass(frozen=True)
class SampleOptions:
    max_new_tokens: int = 200
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = 40
    top_p: float | None = None
    num_samples: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_at_eot: bool = True
    dtype: str = "auto"
    device: str = "auto"
    compile: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise UsageError("--max-new-tokens and --num-samples must be at least 1")
        if self.num_samples > MAX_SAMPLES:  # one batch: 4,096 rows of a 2-layer model already take 2.3 GB
            raise UsageError(f"--num-samples must be at most {MAX_SAMPLES:,} (generated as one batch), got "
                             f"{self.num_samples:,}; run again with another --seed for more")  # fmt: skip
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(f"--temperature must be a finite number >= 0 (0 means greedy), got {self.temperature}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must be in 0..{MAX_SEED} (2**63 - 1), got {self.seed}")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")


@dataclass
class Sample:
    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    stopped: str  # "eot", "stop" or "length"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "tokens_per_s": round(self.new_tokens / self.seconds, 1) if self.seconds else None,
            "stopped": self.stopped,
            "seed": self.seed,
        }


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt from --prompt, --prompt-file, or standard input when it is not a terminal."""
    import sys

    if prompt is not None and prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if prompt is not None:
        return prompt_text(prompt, "--prompt")
    if prompt_file is not None:
        try:
            data = Path(prompt_file).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --prompt-file {prompt_file}: {e.strerror}") from None
        return _without_final_line_break(prompt_text(data, str(prompt_file)))
    if not sys.stdin.isatty():
        return _without_final_line_break(prompt_text(sys.stdin.buffer.read(), "standard input"))
    return ""


def _without_final_line_break(text: str) -> str:
    """A file's (or ``echo``'s) final line break ends its last line, not the prompt: the model continues that line,
    as ``$(cat file)`` would give it. A prompt meant to end in a line break ends in an empty line."""
    return text.removesuffix("\n").removesuffix("\r")


def prompt_text(data: bytes | str, where: str) -> str:
    """``data`` as UTF-8 text, else a usage error naming the first bad byte. Python hands over command-line
    arguments and terminal input that are not UTF-8 with each bad byte as a surrogate escape (PEP 383): they are
    turned back into those bytes, so that they fail here too and never reach the output. A byte-order mark at the
    start (Windows editors write one) is not text."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        raise UsageError(f"the prompt in {where} is not UTF-8 (byte {at}: {data[at : at + 1]!r})") from None


def load_model(directory: Path, device: torch.device) -> tuple[GPT, Tokenizer]:
    """The model of an artifact or Hugging Face directory, in eval mode, and the tokenizer beside it."""
    model = GPT.load(directory, map_location=device).eval()
    tokenizer = Tokenizer.load(directory)
    if (n_tok := tokenizer.vocab_size) != (n_model := model.config.vocab_size):
        raise Gpt2Error(f"{directory}: the tokenizer has {n_tok} tokens, the model {n_model}")
    return model, tokenizer


class Sampler:
    """A loaded model and its tokenizer, ready to continue prompts."""

    def __init__(self, source: str | Path, store: Store, options: SampleOptions):
        options.validate()
        self.options = options
        directory = model_directory(source, store)
        self.device = resolve_device(options.device)
        dtype = DTYPES[options.dtype] or fast_dtype(self.device)
        model, self.tokenizer = load_model(directory, self.device)
        self.model = model.to(dtype)
        self.forward: Any = torch.compile(self.model, dynamic=True) if options.compile else self.model
        self.label = str(directory)

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt) if prompt else []
        limit = self.model.config.n_ctx
        if len(ids) > limit:
            log.warning(
                "prompt of %d tokens is longer than the context (%d); keeping its last %d", len(ids), limit, limit
            )
            ids = ids[-limit:]
        return ids or [self.tokenizer.eot_id]

    def generate(self, prompt: str, on_text: Callable[[str], None] | None = None) -> list[Sample]:
        """``num_samples`` continuations of ``prompt``, generated together as one batch.

        ``on_text`` receives the first sample's text as it is produced (for streaming to a terminal).
        """
        opts, tok = self.options, self.tokenizer
        ids = self.encode_prompt(prompt)
        seed = opts.seed if opts.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        idx = torch.tensor([ids] * opts.num_samples, device=self.device)
        stop_strings = [s for s in opts.stop if s]
        streams = [_TextStream(tok, stop_strings) for _ in range(opts.num_samples)]
        stopped = ["length"] * opts.num_samples
        produced = [0] * opts.num_samples  # up to and including the token that stopped the row, not its padding
        finished_at: list[float | None] = [None] * opts.num_samples  # a row's tokens/s is over its own time
        stop_ids = [tok.eot_id] if opts.stop_at_eot else []

        def on_step(new_ids: torch.Tensor) -> torch.Tensor:
            finish = torch.zeros(len(streams), dtype=torch.bool)
            for row, (stream, token) in enumerate(zip(streams, new_ids.tolist(), strict=True)):
                if stopped[row] != "length":
                    continue
                produced[row] += 1
                if token in stop_ids:
                    stopped[row] = "eot"
                elif stream.push(token):
                    stopped[row] = "stop"
                    finish[row] = True
                if stopped[row] != "length":
                    finished_at[row] = time.perf_counter()
            if on_text is not None and (delta := streams[0].pending()):
                on_text(delta)
            return finish

        started = time.perf_counter()
        try:
            with torch.inference_mode():
                self.model.generate(
                    idx,
                    opts.max_new_tokens,
                    temperature=opts.temperature,
                    top_k=opts.top_k,
                    top_p=opts.top_p,
                    generator=generator,
                    stop_ids=stop_ids,
                    on_step=on_step,
                    forward=self.forward,
                )
        except NotFinite as e:  # a diverged or damaged checkpoint
            raise NotFinite(f"{self.label}: {e}") from None
        except RuntimeError as e:  # the batch's cache does not fit (torch.OutOfMemoryError on GPUs)
            if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)):
                raise
            raise Gpt2Error(
                f"not enough memory for {opts.num_samples:,} samples generated at once on {self.device} "
                f"({str(e).splitlines()[0]}): ask for fewer with --num-samples"
            ) from None
        ended = time.perf_counter()
        samples = [Sample(prompt, stream.finish(), len(ids), produced[row], (finished_at[row] or ended) - started,
                          stopped[row], seed) for row, stream in enumerate(streams)]  # fmt: skip
        if on_text is not None and (rest := streams[0].pending(final=True)):
            on_text(rest)
        return samples


class _TextStream:
    """Token ids to text as they arrive. Bytes of a character split across tokens wait for the rest, and
    the last few characters wait while they could still be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.done = False

    def push(self, token: int) -> bool:
        """Add a token; True when a stop string has appeared (the text is cut before it)."""
        self.text += self.decoder.decode(self.tokenizer.decode_bytes([token]))
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.done = True
        return self.done

    def pending(self, final: bool = False) -> str:
        """Text not yet shown that can no longer change."""
        end = len(self.text) if final or self.done else max(len(self.text) - self.hold, 0)
        if end <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def finish(self) -> str:
        if not self.done:
            self.text += self.decoder.decode(b"", final=True)
        return self.text
