"""Native CPU kernels, compiled on first use with the system's C compiler.

Decoding a token reads every weight once, so sampling on a CPU runs at the speed weights stream from memory.
PyTorch falls short of that for decoding's shapes: its kernels for products of a few rows (see ``gemv.c``),
and the overhead of its some 400 operator calls per step of 124M (see ``decode.c``). So the model's linears of
up to ``MAX_ROWS`` rows run on ``gemv.c``, and a whole decoding step of up to ``MAX_ROWS`` rows on
``decode.c``. They are built once per source, compiler and CPU with ``-march=native`` into
``$GPT2_CACHE/native`` (default ``~/.cache/gpt2cli/native``) and loaded with ctypes; without a compiler, or
with ``GPT2_NATIVE=0``, everything runs on PyTorch. For top-k sampling and greedy decoding, the step screens
the output head (see ``head.c``): only the logits that top-k can keep are computed, exactly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "gemv.c", HERE / "decode.c", HERE / "head.c")
HEADERS = (HERE / "native.h",)
# an intrinsic the compiler lacks must fail the build, not leave an undefined symbol in the library
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-Werror=implicit-function-declaration")
# Rows (batch x new positions) computed in one pass over the weights; beyond them PyTorch's matrix-matrix
# products win. Measured in BENCHMARKS.md ("Generation").
MAX_ROWS = 8
KERNELS = {torch.float32: "gpt2_linear_f32", torch.bfloat16: "gpt2_linear_bf16"}
DECODERS = {torch.float32: "gpt2_decode_f32", torch.bfloat16: "gpt2_decode_bf16"}
BUILD_TIMEOUT_S = 300.0
# Screening the head pays while k is a small part of the vocabulary: head.c computes all of it past V / 8 rows left.
SCREEN_MAX_FRACTION = 8
# Steps whose screen left the whole head to compute (flat logits: an untrained model) before a cache stops trying.
SCREEN_MAX_MISSES = 3


def screen_pays(n_embd: int, element_size: int, batch: int) -> bool:
    """Whether the screen saves more than it costs: it saves ``n_embd * (element_size - 1)`` bytes of reading per
    vocabulary row, and costs some work per row of each sample. Measured on 2 cores (BENCHMARKS.md, "Generation"):
    124M float32 +19-27% at batch 1 and +8-16% at 8, bfloat16 about +5% at batch 1 and nothing at 8; ``small``
    float32 +37% at batch 1; the narrow ``mini`` loses (bfloat16: -10% at batch 1, -30% at 8)."""
    return n_embd * (element_size - 1) >= 128 * batch + 512


class NativeUnavailable(RuntimeError):
    """The kernel could not be built or loaded; callers fall back to PyTorch."""


def cache_root() -> Path:
    root = os.environ.get("GPT2_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2cli"
    return Path(root) / "native"


def _cpu_identity() -> str:
    """Model name and feature flags: a -march=native build must not be reused on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read(1 << 16).splitlines()
        return "\n".join(next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags"))
    except OSError:
        return platform.processor()


def build(compiler: str | None = None, cache: Path | None = None, flags: tuple[str, ...] = FLAGS) -> Path:
    """The compiled library's path, compiling it first when this source, compiler and CPU have none yet."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise NativeUnavailable("no C compiler found (set CC)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"C compiler {cc!r} does not run: {exc}") from None
    texts = [f.read_text() for f in (*SOURCES, *HEADERS)]
    identity = [*texts, cc, version, " ".join(flags), platform.machine(), _cpu_identity()]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    target = (cache or cache_root()) / key / "libgpt2_native.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        try:
            command = [cc, *flags, *map(str, SOURCES), "-o", partial]
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeUnavailable(f"compiling the native kernels failed: {exc}") from None
        if done.returncode != 0:
            reason = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip())
            raise NativeUnavailable(f"compiling the native kernels failed: {reason[:300]}")
        os.replace(partial, target)  # atomic: a concurrent or interrupted build never leaves a partial library
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {path}: {exc}") from None
    for name in KERNELS.values():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        fn.restype = ctypes.c_int
    for name in DECODERS.values():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 7 + [ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    lib.gpt2_screen_prepare.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 2
    lib.gpt2_screen_prepare.restype = None
    lib.gpt2_screened_head.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
    lib.gpt2_screened_head.restype = ctypes.c_int
    lib.gpt2_screen_max_rows.argtypes = []
    lib.gpt2_screen_max_rows.restype = ctypes.c_int
    lib.gpt2_linear_columns.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    lib.gpt2_linear_columns.restype = ctypes.c_int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernel library for this process, or None (PyTorch's kernels are used) when it cannot be had."""
    if os.environ.get("GPT2_NATIVE", "1") == "0":
        return None
    try:
        return load(build())
    except (NativeUnavailable, OSError) as exc:
        log.debug("native kernels unavailable, PyTorch's are used: %s", exc)
        return None


def linear_rows(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` by the native kernel (any number of rows): contiguous CPU tensors of one dtype of KERNELS."""
    K, N = x.size(-1), weight.size(0)
    rows = x.reshape(-1, K).contiguous()
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
    status = getattr(lib, KERNELS[x.dtype])(
        rows.data_ptr(),
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        rows.size(0),
        N,
        K,
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError("native linear: out of memory")
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through the native kernel for a few rows (decoding) on a CPU without autograd."""
    if (
        not torch.compiler.is_compiling()  # compiled graphs keep PyTorch's op
        and x.dtype in KERNELS
        and weight.dtype is x.dtype
        and x.device.type == "cpu"
        and x.numel() <= MAX_ROWS * x.size(-1)
        and not torch.is_grad_enabled()
        and weight.is_contiguous()
        and (bias is None or (bias.dtype is x.dtype and bias.is_contiguous()))
        and (lib := library()) is not None
    ):
        return linear_rows(lib, x, weight, bias)
    return F.linear(x, weight, bias)


def _plain(t: torch.Tensor) -> bool:
    """A contiguous tensor of its own memory: not a subclass such as FSDP2's sharded DTensor parameters, whose
    data pointer holds one shard."""
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_contiguous()


class HeadScreenArgs(ctypes.Structure):
    """``struct head_screen`` of native.h."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("q", "scale", "radius", "reach")] + [
        ("max_radius", ctypes.c_float),
        ("max_reach", ctypes.c_float),
        ("top", ctypes.c_int64),
    ]


class HeadScreen:
    """The output head as int8 rows with a scale and the bound's two coefficients per row (``gpt2_screen_prepare``),
    for ``head.c``'s screen; ``version`` is the head's version counter when it was made."""

    def __init__(self, lib: ctypes.CDLL, head: torch.Tensor, vocab: int):
        self.version, self.vocab = head._version, vocab
        self.q = torch.empty(vocab, head.size(1), dtype=torch.int8)
        self.scale = torch.empty(vocab)
        self.radius = torch.empty(vocab)
        self.reach = torch.empty(vocab)
        lib.gpt2_screen_prepare(
            head.data_ptr(),
            self.q.data_ptr(),
            self.scale.data_ptr(),
            self.radius.data_ptr(),
            self.reach.data_ptr(),
            vocab,
            head.size(1),
            torch.get_num_threads(),
            int(head.dtype is torch.bfloat16),
        )
        self.max_radius, self.max_reach = float(self.radius.max()), float(self.reach.max())

    def args(self, top: int) -> HeadScreenArgs:
        pointers = (t.data_ptr() for t in (self.q, self.scale, self.radius, self.reach))
        return HeadScreenArgs(*pointers, self.max_radius, self.max_reach, top)


# One screen per head tensor (by identity: tensors compare elementwise), shared by the caches of successive
# generate() calls, dropped with the tensor.
_screens: dict[int, HeadScreen] = {}


def head_screen(lib: ctypes.CDLL, head: torch.Tensor, vocab: int) -> HeadScreen:
    """The screen of the first ``vocab`` rows of ``head``, made again when the head has changed in place."""
    screen = _screens.get(id(head))
    if screen is None or screen.version != head._version or screen.vocab != vocab:
        if screen is None:
            weakref.finalize(head, _screens.pop, id(head), None)
        screen = _screens[id(head)] = HeadScreen(lib, head, vocab)
    return screen


class Decoder:
    """``decode.c``'s step bound to one model's weights and one KV cache, checked once (see ``decoder``).

    It keeps the tensors it points to alive: weights updated in place (an optimizer step) are seen, weights
    replaced by new tensors are not.
    """

    def __init__(
        self, lib: ctypes.CDLL, params: Sequence[torch.Tensor], caches: Sequence[torch.Tensor], n_head: int, vocab: int
    ):
        self.lib, self.head = lib, params[0]
        self.kept = [t.detach() for t in (*params, *caches)]
        self.params = (ctypes.c_void_p * len(params))(*[t.data_ptr() for t in params])
        self.caches = (ctypes.c_void_p * len(caches))(*[t.data_ptr() for t in caches])
        self.function = getattr(lib, DECODERS[params[0].dtype])
        self.dtype, self.n_layer, self.n_head, self.vocab_size = params[0].dtype, len(caches) // 2, n_head, vocab
        self.n_vocab_rows, self.n_embd = params[0].shape
        self.batch, self.length = caches[0].size(0), caches[0].size(2)
        self.screen_rows, self.screen_misses = lib.gpt2_screen_max_rows(), 0

    def step(self, ids: torch.Tensor, position: int, top_k: int | None = None) -> torch.Tensor | None:
        """Logits (batch, 1, vocab_size) of one new token per row (``ids``: (batch, 1)) at ``position``, whose
        keys and values are written into the cache; None, nothing written, where PyTorch must do it instead
        (autograd, autocast, under ``torch.compile``, no room left, an id out of range). With ``top_k``, logits
        that cannot be among a row's ``top_k`` largest may come back as -inf; the others are as without it."""
        if (
            torch.compiler.is_compiling()
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
            or ids.shape != (self.batch, 1)
            or ids.dtype is not torch.int64
            or ids.device.type != "cpu"
            or not 0 <= position < self.length
            or int(ids.min()) < 0
            or int(ids.max()) >= self.n_vocab_rows  # PyTorch's embedding says which id is out of range
        ):
            return None
        ids = ids.contiguous()  # a column of the prompt is not
        logits = torch.empty(self.batch, 1, self.vocab_size, dtype=self.dtype)
        screen = None
        if (
            top_k is not None
            and 0 < top_k * SCREEN_MAX_FRACTION <= self.vocab_size
            and self.batch <= self.screen_rows
            and screen_pays(self.n_embd, self.dtype.itemsize, self.batch)
            and self.screen_misses < SCREEN_MAX_MISSES
        ):
            screen = ctypes.byref(head_screen(self.lib, self.head, self.vocab_size).args(top_k))
        status = self.function(
            self.params,
            self.caches,
            ids.data_ptr(),
            logits.data_ptr(),
            self.batch,
            position,
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.vocab_size,
            self.length,
            torch.get_num_threads(),
            screen,
        )
        if status == 1:
            raise MemoryError("native decoding step: out of memory")
        self.screen_misses += status == 2
        return logits


def decoder(
    params: Sequence[torch.Tensor], caches: Sequence[torch.Tensor], n_head: int, vocab_size: int
) -> Decoder | None:
    """The native decoding step for these weights and this cache, or None where it does not apply: another
    device or dtype, more than ``MAX_ROWS`` rows, tensor subclasses such as FSDP2's sharded parameters.

    ``params``: wte, wpe, then each block's ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (weight,
    then bias), then ln_f's weight and bias (``GPT.decode_parameters``); ``caches``: each block's keys and
    values, (batch, n_head, length, head size).
    """
    dtype, n_embd = params[0].dtype, params[0].size(1)
    shape = (caches[0].size(0), n_head, caches[0].size(2), n_embd // n_head)
    if (
        dtype not in DECODERS
        or shape[0] > MAX_ROWS
        or any(not _plain(t) or t.dtype is not dtype or t.device.type != "cpu" for t in params)
        or any(not _plain(t) or t.shape != shape or t.dtype is not dtype for t in caches)
        or (lib := library()) is None
    ):
        return None
    return Decoder(lib, params, caches, n_head, vocab_size)
