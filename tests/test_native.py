"""The native decoding kernels: PyTorch's results, built once per CPU, and never required."""

from __future__ import annotations

import collections
import ctypes
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt2cli import native
from gpt2cli.model import GPT, GPTConfig, KVCache

NO_AMX = ("-mno-amx-tile", "-mno-amx-bf16")
HeadScreen = native.HeadScreen


@pytest.fixture(scope="module", params=["native", "no-amx", "portable", "avx2"])
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The build for this CPU, and the code that CPUs without AMX (AVX512-BF16's vdpbf16ps for every row count),
    without AVX512-BF16 (the portable vector-extension code, 16 lanes) and without AVX-512 (8 lanes) run."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = {
        "native": native.FLAGS,
        "no-amx": (*native.FLAGS, *NO_AMX),
        "portable": (*native.FLAGS, *NO_AMX, "-mno-avx512bf16"),
        "avx2": (*native.FLAGS, *NO_AMX, "-mno-avx512f"),
    }[request.param]
    feature = {"no-amx": "amx_bf16", "portable": "avx512_bf16", "avx2": "avx512f"}.get(request.param)
    if feature and (not cpuinfo.exists() or feature not in cpuinfo.read_text()):
        pytest.skip(f"this CPU has no {feature}: its native build already is the {request.param} code")
    try:
        return native.load(native.build(cache=tmp_path_factory.mktemp("native"), flags=flags))
    except native.NativeUnavailable as exc:
        if "no C compiler" not in str(exc):
            raise  # a compiler that rejects these sources: a bug here, not a machine without the kernels
        pytest.skip(f"no native kernels on this machine: {exc}")


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bfloat16 units in the last place (same-sign finite values)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 17])
@pytest.mark.parametrize(
    ("n_out", "n_in"), [(1, 1), (37, 15), (64, 16), (33, 50), (37, 64), (256, 768), (33, 3000)]
)  # 3000: x taken in slices of K
def test_bf16_kernel_gives_pytorch_bf16_linear(lib: ctypes.CDLL, rows: int, n_out: int, n_in: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + n_out + n_in)
    x = torch.randn(rows, n_in, generator=g).bfloat16()
    w = torch.randn(n_out, n_in, generator=g).bfloat16()
    b = torch.randn(n_out, generator=g).bfloat16()
    for bias in (None, b):
        got = native.linear_rows(lib, x, w, bias)
        exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        rounded = exact.bfloat16()
        assert got.shape == (rows, n_out) and got.dtype is torch.bfloat16
        # float32 sums in another order may land on the other side of a rounding boundary, never further
        same_sign = torch.sign(got.float()) == torch.sign(rounded.float())
        assert bool((ulps_apart(got, rounded)[same_sign] <= 1).all())
        assert bool(((got.float() - rounded.float()).abs()[~same_sign] <= 1e-3).all())
        assert (got == rounded).float().mean() > 0.9


@pytest.mark.parametrize("rows", [1, 3, 8, 9])
@pytest.mark.parametrize(("n_out", "n_in"), [(1, 1), (37, 15), (33, 50), (256, 768), (33, 3000)])
def test_float32_kernel_is_exact_to_float32_rounding(lib: ctypes.CDLL, rows: int, n_out: int, n_in: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + n_out + n_in)
    x, w, b = (
        torch.randn(rows, n_in, generator=g),
        torch.randn(n_out, n_in, generator=g),
        torch.randn(n_out, generator=g),
    )
    for bias in (None, b):
        got = native.linear_rows(lib, x, w, bias).double()
        exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        # a float32 sum of n_in + 1 terms in any order is within (n_in + 1) eps of the sum of their magnitudes
        magnitude = x.double().abs() @ w.double().abs().T + (0 if bias is None else bias.double().abs())
        assert bool(((got - exact).abs() <= (n_in + 1) * 2**-23 * magnitude).all())


def test_kernel_keeps_leading_dimensions_and_ignores_threads(lib: ctypes.CDLL) -> None:
    x = torch.randn(2, 1, 96).bfloat16()
    w = torch.randn(130, 96).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.linear_rows(lib, x, w, None)
        torch.set_num_threads(2)
        two = native.linear_rows(lib, x, w, None)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (2, 1, 130)
    assert torch.equal(one, two)  # each output is summed by one thread, in one order


def test_kernel_rounds_to_nearest_even_and_keeps_nan_and_inf(lib: ctypes.CDLL) -> None:
    x = torch.tensor([[1.0, 1.0]]).bfloat16()
    w = torch.tensor([[1.0, 2**-8], [1.0, 3 * 2**-8], [float("nan"), 0.0], [float("inf"), 0.0], [-1.0, -(2**-8)]])
    got = native.linear_rows(lib, x, w.bfloat16(), None)
    # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa, as in torch's conversion
    expected = torch.tensor([[1.0, 1 + 2**-6, float("nan"), float("inf"), -1.0]])
    exact = torch.tensor([[1 + 2**-8, 1 + 3 * 2**-8, -1 - 2**-8]])
    assert torch.equal(exact.bfloat16().float(), expected[:, [0, 1, 4]])  # torch rounds these ties the same way
    torch.testing.assert_close(got.float(), expected, equal_nan=True, rtol=0, atol=0)


class CountingLibrary:
    """The real library, counting the calls that reach each of its functions."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib, self.calls = lib, collections.Counter[str]()

    def __getattr__(self, name: str) -> Callable[..., int]:
        function = getattr(self.lib, name)

        def counted(*args: object) -> int:
            self.calls[name] += 1
            return function(*args)

        return counted

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def test_linear_uses_the_kernel_only_for_few_rows_without_autograd(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingLibrary(lib)
    monkeypatch.setattr(native, "library", lambda: counting)
    w = torch.randn(48, 32).bfloat16()
    few, many = torch.randn(1, native.MAX_ROWS, 32).bfloat16(), torch.randn(1, native.MAX_ROWS + 1, 32).bfloat16()
    with torch.no_grad():
        native.linear(few, w)
        assert counting.total == 1
        native.linear(few.float(), w.float())
        assert counting.total == 2
        native.linear(many, w)
        native.linear(few.double(), w.double())
        native.linear(few, w.t().contiguous().t())  # a transposed (non-contiguous) weight
        assert counting.total == 2
    trained = w.clone().requires_grad_()
    out = native.linear(few, trained)
    assert counting.total == 2 and out.grad_fn is not None


def small_model(dtype: torch.dtype, n_embd: int = 64, n_head: int = 2, vocab_size: int = 300, pad: int = 1) -> GPT:
    """A model whose LayerNorm gains and biases are not the initial ones, as in a trained model."""
    config = GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, n_ctx=32, vocab_size=vocab_size, pad_vocab_multiple=pad)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.to(dtype)


def decode(model: GPT, ids: torch.Tensor, prompt: int, length: int = 16) -> tuple[torch.Tensor, KVCache]:
    """The logits of positions ``prompt`` on, one token per call after a prompt of ``prompt`` tokens."""
    cache = KVCache(model.config, length)
    with torch.inference_mode():
        model(ids[:, :prompt], cache, last_only=True)
        steps = [model(ids[:, t : t + 1], cache) for t in range(prompt, ids.size(1))]
    return torch.cat(steps, dim=1).float(), cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, native.MAX_ROWS])
@pytest.mark.parametrize(
    ("n_embd", "n_head", "vocab_size", "pad", "sharp"),
    [(64, 2, 300, 1, False), (48, 4, 301, 64, False), (64, 4, 300, 1, True)],  # head size 12: vector tails
)
def test_decoding_step_gives_pytorchs_logits_and_cache(
    lib: ctypes.CDLL,
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    batch: int,
    n_embd: int,
    n_head: int,
    vocab_size: int,
    pad: int,
    sharp: bool,
) -> None:
    torch.manual_seed(batch + n_embd)
    model = small_model(dtype, n_embd, n_head, vocab_size, pad)
    if sharp:  # GELU inputs far into both tails, attention close to one-hot
        with torch.no_grad():
            for block in model.transformer.h:
                block.mlp.c_fc.weight.mul_(40)
                block.attn.c_attn.weight[:n_embd].mul_(30)
    ids = torch.randint(0, vocab_size, (batch, 24))  # over 16 positions: scores 16 at a time, then one by one
    counting = CountingLibrary(lib)
    monkeypatch.setattr(native, "library", lambda: counting)
    ours, our_cache = decode(model, ids, prompt=20, length=32)
    assert counting.calls[native.DECODERS[dtype]] == 4  # each new position in one call
    monkeypatch.setattr(native, "library", lambda: None)
    theirs, their_cache = decode(model, ids, prompt=20, length=32)
    assert ours.shape == theirs.shape == (batch, 4, vocab_size)
    assert our_cache.size == their_cache.size == 24
    tolerance = 0.02 if dtype is torch.bfloat16 else 1e-5  # bfloat16: a rounding boundary crossed here and there
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance * theirs.abs().max().item())
    for mine, reference in zip(our_cache.layers, their_cache.layers, strict=True):
        for a, b in ((mine.k, reference.k), (mine.v, reference.v)):
            assert a is not None and b is not None
            expected = b[:, :, :24].float()
            torch.testing.assert_close(a[:, :, :24].float(), expected, rtol=tolerance, atol=tolerance)


def test_decoding_step_leaves_what_it_does_not_cover_to_pytorch(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingLibrary(lib)
    monkeypatch.setattr(native, "library", lambda: counting)
    model = small_model(torch.float32)
    steps = lambda: counting.calls[native.DECODERS[torch.float32]]  # noqa: E731
    decode(model, torch.randint(0, 300, (native.MAX_ROWS + 1, 10)), prompt=8)
    assert steps() == 0  # more rows than the kernels take
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decode(model, torch.randint(0, 300, (2, 10)), prompt=8)
    assert steps() == 0  # autocast computes in bfloat16: PyTorch keeps it
    decode(model.double(), torch.randint(0, 300, (2, 10)), prompt=8)
    assert steps() == 0
    model.float()
    cache = KVCache(model.config, 4)
    with torch.no_grad():
        model(torch.tensor([[7], [8]]), cache)  # the first position of an empty cache: PyTorch allocates it
        assert steps() == 0 and cache.size == 1
        model(torch.tensor([[9], [10]]), cache)
        assert steps() == 1 and cache.size == 2
        with pytest.raises(IndexError):  # PyTorch's embedding names the bad id
            model(torch.tensor([[model.config.padded_vocab_size], [1]]), cache)
        assert steps() == 1 and cache.size == 2
    with torch.enable_grad():
        logits = model(torch.tensor([[1], [2]]), cache)
    assert steps() == 1 and logits.grad_fn is not None


class Shard(torch.Tensor):
    """A tensor subclass, as FSDP2's sharded parameters are: its data pointer need not hold the whole tensor."""


def test_decoding_step_takes_plain_tensors_only(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "library", lambda: lib)
    model = small_model(torch.float32)
    cache = KVCache(model.config, 8)
    with torch.inference_mode():
        model(torch.tensor([[1, 2]]), cache)
        params = model.decode_parameters()
        caches = [buffer for layer in cache.layers for buffer in (layer.k, layer.v)]
        decoder = native.decoder(params, caches, 2, 300)
        assert decoder is not None and decoder.step(torch.tensor([[3]]), cache.size) is not None
        params[5] = params[5].as_subclass(Shard)
        assert native.decoder(params, caches, 2, 300) is None
        params[5], caches[3] = params[5].as_subclass(torch.Tensor), caches[3].as_subclass(Shard)
        assert native.decoder(params, caches, 2, 300) is None


def test_decoding_step_follows_the_model(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights updated in place between steps are used; a cache passed to another model decodes with its weights."""
    model, other = small_model(torch.float32), small_model(torch.float32)
    ids = torch.randint(0, 300, (2, 11))

    def run() -> torch.Tensor:
        cache = KVCache(model.config, 12)
        with torch.no_grad():
            model(ids[:, :8], cache)
            first = model(ids[:, 8:9], cache)
            model.transformer.h[1].mlp.c_fc.bias.add_(0.5)
            second = model(ids[:, 9:10], cache)
            model.transformer.h[1].mlp.c_fc.bias.sub_(0.5)
            third = other(ids[:, 10:11], cache)
        return torch.cat([first, second, third], dim=1)

    counting = CountingLibrary(lib)
    monkeypatch.setattr(native, "library", lambda: counting)
    ours = run()
    assert counting.calls[native.DECODERS[torch.float32]] == 3
    monkeypatch.setattr(native, "library", lambda: None)
    torch.testing.assert_close(ours, run(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, native.MAX_ROWS])
def test_some_columns_come_out_as_the_whole_product_computes_them(
    lib: ctypes.CDLL, dtype: torch.dtype, rows: int
) -> None:
    g = torch.Generator().manual_seed(rows)
    # huge terms that cancel, in random places: any two summation orders give other results (AMX and vdpbf16ps do)
    big = torch.randn(4013, 256, generator=g) * 2**20
    w = torch.cat([big, -big, torch.randn(4013, 256, generator=g)], dim=1)[:, torch.randperm(768, generator=g)]
    x, w = (1 + torch.rand(rows, 768, generator=g) / 8).to(dtype), w.to(dtype)
    whole = native.linear_rows(lib, x, w, None)
    bits = torch.int16 if dtype is torch.bfloat16 else torch.int32
    for cols in (torch.arange(4013), torch.randperm(4013, generator=g)[:300].sort().values, torch.arange(3990, 4013)):
        some = torch.empty(rows, len(cols), dtype=dtype)
        status = lib.gpt2_linear_columns(
            x.data_ptr(), w.data_ptr(), cols.data_ptr(), some.data_ptr(), rows, len(cols), 4013, 768, 2,
            int(dtype is torch.bfloat16),
        )  # fmt: skip
        assert status == 0 and torch.equal(some.view(bits), whole[:, cols].view(bits))


def screened_head(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, top: int, screen: native.HeadScreen | None = None
                  ) -> tuple[int, torch.Tensor, torch.Tensor]:  # fmt: skip
    """head.c's status and logits for x (B, C) by the head w (V, C), and the whole head's logits."""
    screen = screen or native.HeadScreen(lib, w, w.size(0))
    screened = torch.empty(x.size(0), w.size(0), dtype=x.dtype)
    values = x.float()
    status = lib.gpt2_screened_head(
        values.data_ptr(), x.data_ptr(), w.data_ptr(), ctypes.byref(screen.args(top)), screened.data_ptr(),
        x.size(0), w.size(0), w.size(1), 2, int(x.dtype is torch.bfloat16),
    )  # fmt: skip
    return status, screened, native.linear_rows(lib, x, w, None)


def assert_top_k_sees_the_same(screened: torch.Tensor, full: torch.Tensor, top: int) -> torch.Tensor:
    """Every logit top-k keeps is there, bit for bit as the whole head computes it; -inf elsewhere. Returns
    where the screen left logits."""
    left = torch.isfinite(screened)
    kth = full.float().topk(top, dim=-1).values[:, -1:]
    assert left[full.float() >= kth].all()
    bits = torch.int16 if full.dtype is torch.bfloat16 else torch.int32
    assert torch.equal(screened[left].view(bits), full[left].view(bits))
    assert (screened[~left] == float("-inf")).all()
    return left


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, native.MAX_ROWS])
def test_screened_head_keeps_what_top_k_keeps_bit_for_bit(lib: ctypes.CDLL, dtype: torch.dtype, batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    V, C = 4000 + 13, 128  # 13 columns past AMX's last block of 16
    w = torch.randn(V, C, generator=g) * 0.05
    w[1:31] = w[0]  # ties
    w[V - 5 :] = w[0]  # ties among the last columns
    w[31:61] = w[0] + torch.randn(30, C, generator=g) * 1e-3  # near ties
    w = w.to(dtype)
    x = (3 * w[0].float() + 0.3 * torch.randn(batch, C, generator=g)).to(dtype)  # w[0]'s kin on top
    far = torch.randn(batch, C, generator=g)  # the kth among random rows
    spiky = far.clone()
    spiky[:, 5] *= 300  # one huge feature: x's first int8 level is coarse, its second level makes up for it
    far, spiky = far.to(dtype), spiky.to(dtype)
    if batch > lib.gpt2_screen_max_rows():  # no AMX int8 in this build: several rows are left to the whole head
        assert screened_head(lib, far, w, 10)[0] == -1
        return
    for inputs in (x, far, spiky):
        for top in (1, 10, 40):
            status, screened, full = screened_head(lib, inputs, w, top)
            assert status == 0  # screened: no more than V / 8 rows left
            left = assert_top_k_sees_the_same(screened, full, top)
            assert left.sum(dim=-1).max() < V // 8
    # the bound is what keeps them: with coefficients 1000 times too small, some kept logits are lost
    small = native.HeadScreen(lib, w, V)
    small.radius /= 1000
    small.reach /= 1000
    small.max_radius, small.max_reach = small.max_radius / 1000, small.max_reach / 1000
    lost = 0
    for inputs in (x, far, spiky):
        for top in (1, 10, 40):
            _, screened, full = screened_head(lib, inputs, w, top, small)
            kth = full.float().topk(top, dim=-1).values[:, -1:]
            lost += int((~torch.isfinite(screened) & (full.float() >= kth)).sum())
    assert lost > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_screened_head_holds_where_its_bound_is_tight(lib: ctypes.CDLL, dtype: torch.dtype, batch: int) -> None:
    """Row pairs: one whose quantization error lines up with x, so that its approximate logit falls short by the
    whole bound, and its twin, quantized exactly, whose logit is a hair below. Top-k keeps the first: only a
    bound that is not too small keeps it."""
    if batch > lib.gpt2_screen_max_rows():
        pytest.skip("no AMX int8 in this build: several rows are left to the whole head")
    g = torch.Generator().manual_seed(batch)
    V, C = 4000, 128
    signs = torch.randn(C, generator=g).sign()
    signs[0] = 0
    x = signs.repeat(batch, 1).to(dtype)  # |x| all equal: Cauchy-Schwarz is tight
    levels = torch.randint(-14, 15, (V // 2, C), generator=g).float()
    levels[:, 0] = 127  # each row's scale is 2^-7, and every weight here is exact in bfloat16 too
    step = torch.zeros(C)
    step[1:48] = signs[1:48]  # the twin: 47 levels up along x, against 47.625 for the lined-up row
    lined_up, twin = levels + 3 / 8 * signs, levels + step  # 3/8 of a level: rounds to `levels`, error along x
    w = (torch.stack([lined_up, twin], dim=1).reshape(V, C) / 128).to(dtype)
    for top in (1, 5, 10, 40):
        status, screened, full = screened_head(lib, x, w, top)
        assert status == 0
        assert_top_k_sees_the_same(screened, full, top)


def test_screened_head_leaves_what_it_cannot_screen_to_the_whole_head(lib: ctypes.CDLL) -> None:
    w = torch.randn(800, 64)
    x = torch.randn(1, 64)
    assert screened_head(lib, x, w, 150)[0] == -1  # over V / 8 rows must stay
    assert screened_head(lib, torch.full((1, 64), float("nan")), w, 5)[0] == -1
    assert screened_head(lib, torch.randn(lib.gpt2_screen_max_rows() + 1, 64), w, 5)[0] == -1
    assert screened_head(lib, torch.randn(2, 48), torch.randn(800, 48), 5)[0] == -1  # AMX takes 64 of C at a time
    w[7, 3], x[:, 3] = float("inf"), 1.0  # a row that cannot be bounded always stays
    status, screened, full = screened_head(lib, x, w, 5)
    assert status == 0 and (screened[:, 7] == float("inf")).all() and torch.equal(screened[:, 7], full[:, 7])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, native.MAX_ROWS])
def test_decoding_step_screens_the_head_for_top_k(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, batch: int
) -> None:
    monkeypatch.setattr(native, "library", lambda: lib)
    monkeypatch.setattr(native, "screen_pays", lambda *shape: True)  # a model small enough to test, screened
    screens = batch <= lib.gpt2_screen_max_rows()  # several rows: only with AMX int8
    made = collections.Counter()
    monkeypatch.setattr(native, "HeadScreen", lambda *a: made.update([1]) or HeadScreen(*a))
    torch.manual_seed(batch)
    model = small_model(dtype, vocab_size=1001, pad=64)
    ids = torch.randint(0, 1001, (batch, 12))
    for top in (1, 5):
        full, _ = decode(model, ids, prompt=8)
        cache = KVCache(model.config, 16)
        with torch.inference_mode():
            model(ids[:, :8], cache, last_only=True)
            screened = torch.cat([model(ids[:, t : t + 1], cache, top_k=top) for t in range(8, 12)], dim=1)
        left = assert_top_k_sees_the_same(screened.flatten(0, 1), full.to(dtype).flatten(0, 1), top)
        assert left.all() != screens
    assert made[1] == screens  # one screen for both caches
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1.5)  # in place: the screen is made again
    full, _ = decode(model, ids, prompt=8)
    cache = KVCache(model.config, 16)
    with torch.inference_mode():
        model(ids[:, :8], cache, last_only=True)
        screened = torch.cat([model(ids[:, t : t + 1], cache, top_k=3) for t in range(8, 12)], dim=1)
    assert made[1] == 2 * screens
    assert_top_k_sees_the_same(screened.flatten(0, 1), full.to(dtype).flatten(0, 1), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_sampling_draws_the_same_tokens_with_a_screened_head(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, batch: int
) -> None:
    monkeypatch.setattr(native, "library", lambda: lib)
    monkeypatch.setattr(native, "screen_pays", lambda *shape: True)
    made = collections.Counter()
    monkeypatch.setattr(native, "HeadScreen", lambda *a: made.update([1]) or HeadScreen(*a))
    torch.manual_seed(0)
    model = small_model(dtype, vocab_size=1001, pad=64)
    prompt = torch.randint(0, 1001, (batch, 5))

    def run() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [
                model.generate(prompt, 20, temperature, top_k, top_p, generator=torch.Generator().manual_seed(3))
                for temperature, top_k, top_p in ((1.0, 40, None), (0.7, 5, 0.9), (0.0, None, None))
            ]

    screened = run()
    assert made[1] == (batch <= lib.gpt2_screen_max_rows())
    monkeypatch.setattr(native, "SCREEN_MAX_FRACTION", 10**9)  # no screen
    for mine, theirs in zip(screened, run(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_cache_stops_screening_a_head_it_cannot_screen(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "library", lambda: lib)
    monkeypatch.setattr(native, "screen_pays", lambda *shape: True)
    asked = collections.Counter()
    screen_of = native.head_screen
    monkeypatch.setattr(native, "head_screen", lambda *a: asked.update([1]) or screen_of(*a))
    model = small_model(torch.float32, vocab_size=1001, pad=64)
    with torch.no_grad():
        model.transformer.wte.weight[:] = model.transformer.wte.weight[0]  # every logit ties: none can be left out
    ids = torch.randint(0, 1001, (1, 12))
    cache = KVCache(model.config, 16)
    with torch.inference_mode():
        model(ids[:, :4], cache, last_only=True)
        logits = [model(ids[:, t : t + 1], cache, top_k=5) for t in range(4, 12)]
    assert asked[1] == native.SCREEN_MAX_MISSES and all(torch.isfinite(x).all() for x in logits)


def test_the_screen_is_used_where_it_pays() -> None:
    assert native.screen_pays(768, 4, 8) and native.screen_pays(768, 2, 1)  # 124M: float32, bfloat16 at batch 1
    assert not native.screen_pays(768, 2, 8) and not native.screen_pays(128, 2, 1)  # 124M bfloat16 at 8, mini


def test_build_is_cached_and_published_whole(tmp_path: Path) -> None:
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine")
    first = native.build(cache=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(cache=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no partial file left behind


def test_build_failures_are_one_line_reasons_and_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc version 0'\necho 'gemv.c:1: error: no such luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(native.NativeUnavailable, match=r"^compiling the native kernels failed: .*error: no such luck$"):
        native.build(compiler=str(broken), cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.so*"))
    with pytest.raises(native.NativeUnavailable, match="does not run"):
        native.build(compiler=str(tmp_path / "no-such-cc"), cache=tmp_path / "cache")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    assert native.library.__wrapped__() is None  # PyTorch's kernels then do the work
    monkeypatch.delenv("CC")
    monkeypatch.setenv("GPT2_NATIVE", "0")
    assert native.library.__wrapped__() is None


def test_a_compiler_that_hangs_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = tmp_path / "slow-cc"
    slow.write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\nexec sleep 30\n')
    slow.chmod(0o755)
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 0.5)
    with pytest.raises(native.NativeUnavailable, match=r"^compiling the native kernels failed: .*timed out"):
        native.build(compiler=str(slow), cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.so*"))
