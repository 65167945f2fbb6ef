"""The GPT-2 model (paper section 2.3): GPT-1's decoder with pre-LN blocks and a final LayerNorm.

Module names follow OpenAI's and Hugging Face's checkpoints (``transformer.h.0.attn.c_attn`` ...), so
weights move between them with a transpose of the Conv1D matrices and nothing else.
"""

from __future__ import annotations

import json
import math
import operator
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt2cli import native
from gpt2cli.errors import Gpt2Error, UsageError

CONFIG_JSON, WEIGHTS = "config.json", "model.safetensors"
# Temperatures by which logits can be divided without overflow or a loss of the precision that keeps them apart.
SAFE_TEMPERATURES = (2**-10, 2**10)


class BadArgument(UsageError, ValueError):
    """An invalid argument of the Python API: a ValueError to callers, a usage error on the command line."""


def _whole_number(value: Any, name: str, minimum: int) -> int:
    """An int, a NumPy integer or a 0-dim integer tensor as an int, if at least ``minimum``; else a BadArgument."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise BadArgument(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


class NotFinite(Gpt2Error):
    """The model computed NaN or infinite scores (a diverged or damaged checkpoint): an argmax, a choice or a draw
    among them would still give an answer, one that means nothing, so nothing is made of them."""


def check_finite(scores: torch.Tensor | Sequence[float], what: str = "scores") -> None:
    """Raise ``NotFinite`` naming the first value of ``scores`` (log-probabilities, NLLs, logits) that is not finite.
    NaN compares false with everything, so a max or argmax over it silently picks the first candidate."""
    values = scores if isinstance(scores, torch.Tensor) else torch.tensor(scores, dtype=torch.float64)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = values[~finite].flatten()[0].item()
        raise NotFinite(f"the model's {what} are not finite ({bad}): is it a diverged or damaged checkpoint?")


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024  # context length in tokens
    vocab_size: int = 50257
    dropout: float = 0.0  # the paper gives none; 0.0 keeps training deterministic across world sizes
    pad_vocab_multiple: int = 64  # embedding rows padded for faster matmuls; logits are sliced back

    @property
    def padded_vocab_size(self) -> int:
        m = max(self.pad_vocab_multiple, 1)
        return (self.vocab_size + m - 1) // m * m


# Paper sizes (Table 2; head counts from the released configs) and small sizes that train on a CPU.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_ctx": 128},
    "mini": {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_ctx": 256},
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384, "n_ctx": 512},
    "124M": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_ctx": 1024},
    "355M": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "n_ctx": 1024},
    "774M": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "n_ctx": 1024},
    "1558M": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "n_ctx": 1024},
}
ALIASES = {"117M": "124M", "345M": "355M", "762M": "774M", "1542M": "1558M"}


def cpu_has_amx() -> bool:
    """Intel AMX makes bfloat16 matmuls several times faster than float32 on a CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read(1 << 16)
    except OSError:
        return False


def fast_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware runs it fast (GPUs with bf16, CPUs with AMX), else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else torch.float32


def config_for(size: str, **overrides: Any) -> GPTConfig:
    name = ALIASES.get(size, size)
    if name not in SIZES:
        raise UsageError(f"unknown model size {size!r}; choose from {', '.join([*SIZES, *ALIASES])}")
    return GPTConfig(**{**SIZES[name], **{k: v for k, v in overrides.items() if v is not None}})


class Linear(nn.Linear):
    """``nn.Linear`` whose products of a few rows on a CPU (decoding) run on ``gpt2cli.native``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return native.linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise UsageError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        causal, mask = True, None
        if cache is not None:
            past = cache.size
            k, v = cache.append(k, v)
            causal = T > 1 and past == 0  # one new query may look at every cached position
            if T > 1 and past:  # several new queries: each sees the cache and the new positions up to its own
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # flash attention kernels on GPU
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(gelu(self.c_fc(x))))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-1 and GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Without autograd on the CPU it is computed in place as x sigmoid(2u) (0.5 (1 + tanh u) = sigmoid(2u)):
    PyTorch's fused CPU kernel for it is several times slower than its sigmoid, and scoring and sampling
    spend a tenth of their time here. Same values to float32 rounding; training keeps the fused op.
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return F.gelu(x, approximate="tanh")
    u = torch.addcmul(x.new_tensor(2 * _GELU_K), x, x, value=2 * _GELU_K * 0.044715)  # 2u / x, in one pass
    return u.mul_(x).sigmoid_().mul_(x)


_GELU_K = math.sqrt(2 / math.pi)


class Block(nn.Module):
    """Pre-LN: LayerNorm at the input of each sub-block, residual connections around both."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class LayerCache:
    """Keys and values of the positions seen so far, in buffers allocated once (no copy per token)."""

    def __init__(self, length: int):
        self.length = length
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.size = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.length, D)
            self.v = v.new_empty(B, H, self.length, D)
        end = self.size + k.size(2)
        self.k[:, :, self.size : end] = k
        self.v[:, :, self.size : end] = v
        self.size = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def expand(self, batch: int, length: int | None = None) -> LayerCache:
        """A copy with this one-row cache's positions repeated ``batch`` times, for continuations of one prefix,
        with room for ``length`` positions in all (default: as many as this one)."""
        out = LayerCache(self.length if length is None else length)
        if out.length < self.size:
            raise Gpt2Error(f"a cache of {self.size} positions does not fit in {out.length}")
        if self.k is not None and self.v is not None:
            rows, H, _, D = self.k.shape
            if rows != 1:
                raise Gpt2Error(f"only a cache of one row can be expanded, this one has {rows}")
            out.k = self.k.new_empty(batch, H, out.length, D)
            out.v = self.v.new_empty(batch, H, out.length, D)
            out.k[:, :, : self.size] = self.k[:, :, : self.size]
            out.v[:, :, : self.size] = self.v[:, :, : self.size]
            out.size = self.size
        return out


class KVCache:
    """One LayerCache per block, with room for ``length`` positions (default: the context);
    ``size`` is the number of positions already processed."""

    def __init__(self, config: GPTConfig, length: int | None = None):
        self.config = config
        self.layers = [LayerCache(length or config.n_ctx) for _ in range(config.n_layer)]
        self.decoder: tuple[GPT, native.Decoder | None] | None = None  # a model's native step bound to this cache

    @property
    def size(self) -> int:
        return self.layers[0].size

    def expand(self, batch: int, length: int | None = None) -> KVCache:
        """A copy of a one-row cache with ``batch`` identical rows: a shared context computed once, then
        several continuations of it scored as one batch. The original is left unchanged. ``length`` (positions
        in all, default ``n_ctx``) keeps the copy small when the continuations are short."""
        out = KVCache(self.config)
        out.layers = [layer.expand(batch, length) for layer in self.layers]
        return out


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.padded_vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.n_ctx, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.n_embd, eps=1e-5),  # the extra LayerNorm after the last block
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # output head tied to the token embedding
        self.apply(self._init_weights)
        # residual-layer weights scaled by 1/sqrt(N), N = 2 * n_layer residual layers
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.01 if module is self.transformer.wpe else 0.02)

    def num_params(self) -> int:
        """Parameters as the paper counts them: the tied head once, vocabulary padding excluded."""
        padding = (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        return sum(p.numel() for p in self.parameters()) - padding

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Logits of shape (batch, time, vocab_size) for token ids of shape (batch, time).

        With a ``cache``, ``idx`` holds only the new positions; ``last_only`` computes the logits of the
        last position alone (all that sampling needs: the output head is the largest matmul at batch 1).
        With ``targets`` (batch, time), the mean cross-entropy is returned instead of the logits, computed
        without ever holding all the logits (see ``linear_cross_entropy``); ``reduction="none"`` returns
        each position's negative log-likelihood instead (batch, time; 0 where the target is negative), for
        scoring without gradients (see ``token_nll``). With ``top_k``, logits that cannot be among a row's
        ``top_k`` largest may come back as -inf (the native decoding step then computes only the others, see
        ``native/head.c``); those that can are as without it.
        """
        start = cache.size if cache is not None else 0
        T = idx.size(1)
        if start + T > self.config.n_ctx:
            raise Gpt2Error(f"sequence of {start + T} tokens is longer than the model's context ({self.config.n_ctx})")
        if (
            cache is not None
            and T == 1
            and targets is None
            and (logits := self._decode_natively(idx, cache, top_k)) is not None
        ):
            return logits
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layers[i] if cache is not None else None)
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        head = self.lm_head.weight[: self.config.vocab_size]
        if targets is not None:
            if reduction == "none":
                return token_nll(x.reshape(-1, x.size(-1)), head, targets.reshape(-1)).view(targets.shape)
            if reduction != "mean":
                raise UsageError(f"reduction must be 'mean' or 'none', got {reduction!r}")
            return linear_cross_entropy(x.reshape(-1, x.size(-1)), head, targets.reshape(-1))
        return native.linear(x, head)

    def decode_parameters(self) -> list[torch.Tensor]:
        """The weights in the order ``native.decoder`` takes them: embeddings, each block's, the final LayerNorm's."""
        t = self.transformer
        params = [t.wte.weight, t.wpe.weight]
        for block in t.h:
            for part in (
                block.ln_1,
                block.attn.c_attn,
                block.attn.c_proj,
                block.ln_2,
                block.mlp.c_fc,
                block.mlp.c_proj,
            ):
                params += (part.weight, part.bias)
        return [*params, t.ln_f.weight, t.ln_f.bias]

    def _decode_natively(self, idx: torch.Tensor, cache: KVCache, top_k: int | None) -> torch.Tensor | None:
        """One new token per row in a single call to ``native.Decoder.step``: decoding without PyTorch's per-operator
        overhead, a third of a step of 124M at batch 1. None where it does not apply (see there)."""
        if torch.compiler.is_compiling():
            return None  # compiled graphs keep PyTorch's ops
        if (self.training and self.config.dropout > 0) or any(layer.k is None for layer in cache.layers):
            return None  # the first position of an empty cache goes through PyTorch, which allocates the cache
        if cache.decoder is None or cache.decoder[0] is not self:  # checked once per cache, not once per token
            buffers = [buffer for layer in cache.layers for buffer in (layer.k, layer.v)]
            step = native.decoder(self.decode_parameters(), buffers, self.config.n_head, self.config.vocab_size)
            cache.decoder = (self, step)
        if cache.decoder[1] is None or (logits := cache.decoder[1].step(idx, cache.size, top_k)) is None:
            return None
        for layer in cache.layers:
            layer.size += 1
        return logits

    def _prefill(
        self, model: Callable[..., torch.Tensor], idx: torch.Tensor, length: int
    ) -> tuple[KVCache, torch.Tensor]:
        """A cache of ``length`` positions holding the prompts, and the logits of their last position. Identical
        prompts (several samples of one prompt) are computed once and the cache copied to every row; a ``model``
        that answers that one row with a row per prompt (a ``forward`` drawing each row's sample) keeps its rows."""
        if idx.size(0) > 1 and bool((idx == idx[:1]).all()):
            one = KVCache(self.config, length)
            logits = model(idx[:1], one, last_only=True)
            return one.expand(idx.size(0), length), logits.expand(idx.size(0), -1, -1)
        cache = KVCache(self.config, length)
        return cache, model(idx, cache, last_only=True)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        generator: torch.Generator | None = None,
        stop_ids: Iterable[int] = (),
        use_cache: bool = True,
        on_step: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
        forward: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Prompt ids (batch, time) followed by up to ``max_new_tokens`` sampled ids per row.

        ``temperature == 0`` means greedy decoding. Rows that produce one of ``stop_ids`` are finished:
        they are padded with that id while the others go on, and generation ends when all rows are.
        The KV cache computes each position once; once the sequence outgrows the context, every step
        attends to the last ``n_ctx`` tokens (a sliding window recomputed per step, exactly as without
        a cache). ``on_step`` receives each step's new ids (batch,), for streaming, and may return a
        boolean mask of rows to finish (a stop string seen). ``forward`` replaces ``self`` for the
        forward passes (a compiled model).
        """
        idx = self._prompt_ids(idx)
        max_new_tokens = _whole_number(max_new_tokens, "max_new_tokens", 0)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise BadArgument(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise BadArgument(f"top-p must be in (0, 1], got {top_p}")
        top_k = None if top_k is None else _whole_number(top_k, "top-k", 1)
        n_ctx = self.config.n_ctx
        stops = torch.tensor(sorted(set(stop_ids)), device=idx.device, dtype=idx.dtype)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        pad = torch.full_like(finished, stops[0].item() if len(stops) else 0, dtype=idx.dtype)
        cache: KVCache | None = None
        model = self if forward is None else forward  # a compiled module has no truth value
        top = logits_needed(temperature, top_k)
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= n_ctx:
                if cache is None:
                    # room for this call's positions only: 124M at batch 8 would hold 600 MB for the full context
                    cache, logits = self._prefill(model, idx, min(n_ctx, idx.size(1) + max_new_tokens))
                else:
                    logits = model(idx[:, -1:], cache, last_only=True, top_k=top)
            else:
                logits = model(idx[:, -n_ctx:], last_only=True)
            next_id = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
            next_id = torch.where(finished, pad, next_id)
            if len(stops):
                finished |= torch.isin(next_id, stops)
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if on_step is not None and (finish := on_step(next_id)) is not None:
                finished |= finish.to(finished.device)
            if finished.all():
                break
        return idx

    def _prompt_ids(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` as generate reads it, or a BadArgument that says what it should be (not an embedding's error)."""
        shape = "a (batch, time) tensor of token ids, batch and time >= 1"
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or 0 in idx.shape:
            got = f"shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise BadArgument(f"idx must be {shape}, got {got}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise BadArgument(f"idx must be {shape} of an integer dtype, got {idx.dtype}")
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= self.config.vocab_size:
            raise BadArgument(
                f"idx holds {low if low < 0 else high}, outside the vocabulary 0..{self.config.vocab_size - 1}"
            )
        return idx.long()

    # -- files: one format, Hugging Face's GPT-2 layout ----------------------------------------------

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under Hugging Face GPT-2 names, Conv1D matrices transposed, padding rows dropped."""
        out = {}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight":
                continue  # tied to transformer.wte.weight
            t = tensor.detach()
            if name == "transformer.wte.weight":
                t = t[: self.config.vocab_size]
            elif _is_conv1d(name):
                t = t.t()
            out[name] = t.contiguous()
        return out

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        loaded = set()
        for raw_name, tensor in state.items():
            name = raw_name if raw_name.startswith(("transformer.", "lm_head.")) else f"transformer.{raw_name}"
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue  # HF's causal-mask buffers; the head is tied
            if name not in own:
                raise Gpt2Error(f"checkpoint has an unexpected tensor {raw_name!r}")
            t = tensor.t() if _is_conv1d(name) else tensor
            if name == "transformer.wte.weight":
                if t.shape != (self.config.vocab_size, own[name].shape[1]):  # one row per token, no more, no less
                    raise Gpt2Error(f"tensor {raw_name!r} has shape {tuple(tensor.shape)}, the config needs "
                                    f"{(self.config.vocab_size, own[name].shape[1])}")  # fmt: skip
                padded = own[name].clone()
                padded[: t.shape[0]] = t
                t = padded
            if t.shape != own[name].shape:
                raise Gpt2Error(
                    f"tensor {raw_name!r} has shape {tuple(tensor.shape)}, the config needs {tuple(own[name].shape)}"
                )
            own[name].copy_(t)
            loaded.add(name)
        missing = set(own) - loaded - {"lm_head.weight"}
        if missing:
            raise Gpt2Error(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")

    def save(self, directory: Path | str) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_JSON).write_text(json.dumps(hf_config(self.config), indent=2))
        save_file({k: v.float().cpu() for k, v in self.hf_state_dict().items()}, directory / WEIGHTS)

    @classmethod
    def load(cls, source: Any, *, map_location: str | torch.device = "cpu") -> GPT:
        """A model artifact (or a reference to one), or a Hugging Face GPT-2 directory; in eval mode (no dropout).

        Weights come from ``model.safetensors`` or, failing that, ``pytorch_model.bin`` read with
        ``weights_only=True`` (no pickled code is ever executed), or from the shards their ``.index.json`` names.
        Any other artifact is a usage error, and a damaged file a ``Gpt2Error`` naming it, so that every command
        loading a model fails with one line.
        """
        directory = model_directory(source)
        _check_checksums(directory, (CONFIG_JSON, WEIGHTS))
        config = _read_config(directory / CONFIG_JSON)
        model = cls(config)
        path, state = _read_weights(directory, map_location)
        try:
            with torch.no_grad():
                model.load_hf_state_dict(state)
        except Gpt2Error as e:
            raise Gpt2Error(f"{path}: {e}") from None
        return model.to(map_location).eval()


def model_directory(source: Any, store: Any = None) -> Path:
    """The directory of a model: an artifact of kind ``model`` (a reference resolved in ``store``, default the
    environment's), or a directory with a config.json. ``model`` is a reference even beside a ``./model`` folder
    (as in the artifact home itself); ``./model`` names the folder. Checked before anything loads."""
    from gpt2cli.artifacts import MANIFEST, Artifact, Store, is_path_reference, load_manifest

    if isinstance(source, Artifact):
        directory = source.path
    elif is_path_reference(source) or (Path(source) / CONFIG_JSON).is_file():
        directory = Path(source).expanduser()
        if not directory.is_dir():
            raise UsageError(f"no model directory at {directory}")
        if not (directory / CONFIG_JSON).is_file() and not (directory / MANIFEST).is_file():
            raise UsageError(f"{source} is not a model: it has no {CONFIG_JSON}")
    else:
        directory = (store or Store()).resolve(str(source)).path
    if (directory / MANIFEST).is_file():
        manifest = load_manifest(directory)
        if manifest["kind"] != "model":
            raise UsageError(
                f"{manifest['kind']}@{manifest['version']} is a {manifest['kind']!r} artifact, not a model"
            )
        if not (directory / CONFIG_JSON).is_file():
            raise Gpt2Error(f"model artifact {directory} lacks its {CONFIG_JSON}")
    return directory


def _check_checksums(directory: Path, names: tuple[str, ...]) -> None:
    """A model artifact's files as its manifest recorded them: a flipped byte in the weights loads as another
    model without complaint, so sampling, evaluating or exporting one checks them first (a Hugging Face
    directory has no manifest to check against)."""
    from gpt2cli.artifacts import MANIFEST, load_manifest, sha256_file

    if not (directory / MANIFEST).is_file():
        return
    recorded = {f["path"]: f["sha256"] for f in load_manifest(directory)["files"]}
    for name in names:
        if name in recorded and (directory / name).is_file() and sha256_file(directory / name) != recorded[name]:
            raise Gpt2Error(
                f"{directory / name} is damaged: its sha256 differs from the artifact's manifest "
                "(`gpt2 artifacts verify` checks every file)"
            )


def _read_config(path: Path) -> GPTConfig:
    """The config in ``path``; a file that is not JSON, or not a GPT-2 config, is a ``Gpt2Error`` naming it."""
    try:
        raw = json.loads(path.read_bytes())
    except OSError as e:
        raise Gpt2Error(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Gpt2Error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise Gpt2Error(f"{path} is not a JSON object")
    try:
        return config_from_hf(raw)
    except Gpt2Error as e:
        raise Gpt2Error(f"{path}: {e}") from None


def _read_weights(directory: Path, map_location: str | torch.device) -> tuple[Path, dict[str, Any]]:
    """The weights file (or the index of its shards, as transformers saves large models) and its tensors; a truncated
    or corrupt file is a ``Gpt2Error`` naming it."""
    for name in (WEIGHTS, "pytorch_model.bin"):
        if (path := directory / name).is_file():
            return path, _read_weights_file(path, map_location)
        if (index := directory / f"{name}.index.json").is_file():
            state: dict[str, Any] = {}
            for shard in _shards(index):
                state.update(_read_weights_file(directory / shard, map_location))
            return index, state
    raise Gpt2Error(f"{directory} has neither {WEIGHTS} nor pytorch_model.bin (nor an index of their shards)")


def _shards(index: Path) -> list[str]:
    """The shard files a ``*.index.json`` names, each once: names of files beside it, never paths elsewhere."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise Gpt2Error(f"{index} is not an index of weight shards ({type(e).__name__}: {e})") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
            raise Gpt2Error(f"{index} names a shard outside its directory: {shard!r}")
    return shards


def _read_weights_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.name.endswith(".safetensors"):
            state = load_file(path, device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise Gpt2Error(f"{path} is damaged or not a checkpoint: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise Gpt2Error(f"{path} is not a dictionary of tensors")
    return state


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``, a chunk of rows at a time.

    The logits of a GPT-2 batch are the largest tensor of a training step (batch x time x 50,257). Each
    chunk's logits (~64 MB) go into one buffer reused by every chunk, become the softmax in place, and
    their gradient is taken right away: nothing vocabulary-wide is ever allocated per chunk (on the CPU a
    fresh 100 MB tensor costs more in page faults than the softmax itself) or held whole. The weight
    gradient is accumulated inside the GEMM (float32) or through one reused low-precision buffer.
    Same result as F.cross_entropy.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, vocab = h.size(0), weight.size(0)
        rows = max(16, min(n, (64 << 20) // (4 * vocab)))  # about 64 MB of float32 logits at a time
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        device = h.device.type
        # under autocast, cast the operands once here rather than once per chunk inside each matmul
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        low = dtype != torch.float32
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        with torch.autocast(device, enabled=False):
            w, hc = weight.to(dtype), h.to(dtype)
            logits_buffer = torch.empty(rows, vocab, dtype=torch.float32, device=h.device)
            low_buffer = torch.empty(rows, vocab, dtype=dtype, device=h.device) if low else None
            grad_w_low = torch.empty(weight.shape, dtype=dtype, device=h.device) if low and need_grad else None
            grad_w_part = torch.empty_like(grad_w) if low and need_grad else None  # type: ignore[arg-type]
            for start in range(0, n, rows):
                hs, ts = hc[start : start + rows], targets[start : start + rows]
                r = len(hs)
                if low_buffer is not None:  # the GEMM in low precision, the softmax in float32
                    x = logits_buffer[:r].copy_(torch.mm(hs, w.t(), out=low_buffer[:r]))
                else:
                    x = torch.mm(hs, w.t(), out=logits_buffer[:r])
                picked = x.gather(1, ts[:, None])
                lse, sums = _log_sum_exp_(x)  # x is now exp(logits - max)
                total += (lse - picked).sum(dtype=torch.float64)
                if not need_grad:
                    continue
                x.div_(sums)[torch.arange(r, device=x.device), ts] -= 1.0  # softmax - one-hot: d loss / d logits * n
                if low_buffer is not None:
                    g = low_buffer[:r].copy_(x)
                    grad_h[start : start + r] = g @ w  # type: ignore[index]
                    # cast, then add: a mixed-precision add_ is several times slower on the CPU
                    grad_w.add_(grad_w_part.copy_(torch.mm(g.t(), hs, out=grad_w_low)))  # type: ignore[union-attr]
                else:
                    torch.mm(x, w, out=grad_h[start : start + r])  # type: ignore[index]
                    grad_w.addmm_(x.t(), hs)  # type: ignore[union-attr]  # accumulated inside the GEMM
        if need_grad:
            ctx.save_for_backward(grad_h.div_(n), grad_w.div_(n).to(weight.dtype))  # type: ignore[union-attr]
        return (total / n).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad, grad_w * grad, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(h @ weight.T, targets)`` without materializing all the logits at once."""
    return _LinearCrossEntropy.apply(h, weight, targets)


def token_nll(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float32 ``-log softmax(h @ weight.T)[i, targets[i]]`` per row, 0 where ``targets[i] < 0``.

    Scoring needs one number per position, not the logits: computing them a few hundred rows at a time
    into one reused buffer keeps them in cache and spares the page faults of a fresh batch x time x vocab
    tensor per forward pass (the output head of a small model ran 2.5x faster so, see BENCHMARKS.md).
    No gradient flows through it: training uses ``linear_cross_entropy``.
    """
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        raise UsageError("per-token NLL is for scoring: call it under torch.no_grad()")
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    scored = targets >= 0
    if not bool(scored.all()):  # overlapping windows score only their new positions: skip the others' logits
        nll = torch.zeros(targets.shape, dtype=torch.float32, device=h.device)
        nll[scored] = token_nll(h[scored], weight, targets[scored])
        return nll
    n, vocab = h.size(0), weight.size(0)
    chunk = max(128, (8 << 20) // (4 * vocab))  # about 8 MB of float32 logits at a time
    nll = torch.empty(n, dtype=torch.float32, device=h.device)
    with torch.autocast(device, enabled=False):
        w, hc = weight.to(dtype), h.to(dtype)
        buffer = torch.empty(min(chunk, n), vocab, dtype=dtype, device=h.device)
        for start in range(0, n, chunk):
            hs, ts = hc[start : start + chunk], targets[start : start + chunk]
            logits = torch.mm(hs, w.t(), out=buffer[: len(hs)])
            logits = logits if logits.dtype == torch.float32 else logits.float()
            picked = logits.gather(1, ts[:, None])
            nll[start : start + len(hs)] = (_log_sum_exp_(logits)[0] - picked)[:, 0]
    return nll


def _log_sum_exp_(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of float32 logits: (log-sum-exp, sum of exp(x - row max)), both (rows, 1); ``x`` becomes
    exp(x - row max) in place. ~20% faster on the CPU than log_softmax or logsumexp, which write or
    allocate another vocabulary-wide tensor."""
    peak = x.amax(dim=-1, keepdim=True)
    sums = x.sub_(peak).exp_().sum(dim=-1, keepdim=True)
    return peak + sums.log(), sums


TIES_ROOM = 16


def logits_needed(temperature: float, top_k: int | None) -> int | None:
    """The k for which ``sample_next`` looks at no logit below each row's k-th largest, or None (it may look at
    all). Temperatures far from 1 are left out: dividing by them could overflow or lose the float32 precision
    that keeps logits below the k-th largest apart from it."""
    if temperature == 0:
        return 1
    return top_k if top_k is not None and SAFE_TEMPERATURES[0] <= temperature <= SAFE_TEMPERATURES[1] else None


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (batch, vocab); ``temperature == 0`` means the most likely.

    Top-k keeps the k most likely tokens and those tied with the k-th (as transformers does), top-p the
    smallest set of most likely tokens whose probability reaches p (the most likely token always stays). The
    draw is made among the kept candidates only, which avoids a multinomial over the whole vocabulary. The
    candidates are ordered by logit, then id: which of equal values ``torch.topk`` returns first is not
    specified, and the draw must not depend on it.

    Outside ``SAFE_TEMPERATURES`` the logits minus the row's maximum are divided in float64: in float32
    ``logits / 1e-45`` overflows, and a temperature below ~1e-45 rounds to 0 (0 / 0 is NaN). So every finite
    temperature > 0 samples softmax(logits / temperature), down to 5e-324, where it is an even draw among the tokens
    tied at the maximum (the limit; greedy decoding takes the first of them). Logits that are not finite (a diverged
    model's NaN) are a ``NotFinite`` error, never a token.
    """
    peak = logits.amax(dim=-1, keepdim=True)  # NaN when a row holds one: max propagates NaN
    check_finite(peak, "logits")
    if temperature == 0:
        return logits.argmax(dim=-1)  # the first of equal maxima
    if SAFE_TEMPERATURES[0] <= temperature <= SAFE_TEMPERATURES[1]:
        logits = logits / temperature
    else:
        logits = (logits - peak).double() / temperature
    if top_k is not None and top_k < logits.size(-1):
        # a few more than k, so that ties with the k-th (frequent in bfloat16) rarely take a second pass
        values, ids = torch.topk(logits, min(top_k + TIES_ROOM, logits.size(-1)), dim=-1)
        kth = values[:, top_k - 1 : top_k]
        if values.size(-1) < logits.size(-1) and bool((values[:, -1:] >= kth).any()):
            values, ids = torch.topk(logits, int((logits >= kth).sum(dim=-1).max()), dim=-1)
        ids, order = ids.sort(dim=-1)
        values, order = values.gather(-1, order).sort(dim=-1, descending=True, stable=True)
        ids = ids.gather(-1, order)
        values = values.masked_fill(values < kth, float("-inf"))  # another row's ties
    else:
        values, ids = torch.sort(logits, descending=True, dim=-1, stable=True)
    if top_p is not None and top_p < 1.0:
        probs = F.softmax(values, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely candidates
        values = values.masked_fill(before >= top_p, float("-inf"))
    choice = torch.multinomial(F.softmax(values, dim=-1), num_samples=1, generator=generator)
    return ids.gather(-1, choice).squeeze(-1)


def _is_conv1d(name: str) -> bool:
    return name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))


def hf_config(config: GPTConfig) -> dict[str, Any]:
    """A config.json that transformers' GPT2Config reads, with our own settings kept alongside."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_ctx,
        "n_ctx": config.n_ctx,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",  # GELU, tanh approximation
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": config.vocab_size - 1,
        "eos_token_id": config.vocab_size - 1,
        "torch_dtype": "float32",
        "gpt2cli": asdict(config),
    }


# Hugging Face GPT-2 settings that change the outputs, and the values the model implements (GPT-2's own).
_GPT2_AS_RELEASED: dict[str, Any] = {
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,  # an untied lm_head.weight would be dropped
}


def config_from_hf(raw: dict[str, Any]) -> GPTConfig:
    """Our config from a config.json (ours or Hugging Face's); a missing field or a size no model can have is a
    ``Gpt2Error`` rather than a failure deep inside the model's constructor."""
    if isinstance(ours := raw.get("gpt2cli"), dict):
        known = {f.name for f in fields(GPTConfig)}
        config = GPTConfig(**{k: v for k, v in ours.items() if k in known})
    else:
        if raw.get("model_type", "gpt2") != "gpt2":
            raise Gpt2Error(f"not a GPT-2 checkpoint (model_type {raw.get('model_type')!r})")
        if raw.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise Gpt2Error(f"unsupported activation {raw['activation_function']!r}")
        for name, value in _GPT2_AS_RELEASED.items():
            if raw.get(name, value) != value:
                raise Gpt2Error(f"unsupported GPT-2 variant: {name} is {raw[name]!r}, GPT-2's is {value!r}")
        try:
            if raw.get("n_inner") not in (None, 4 * raw["n_embd"]):
                raise Gpt2Error(f"unsupported GPT-2 variant: n_inner is {raw['n_inner']!r}, not 4 x n_embd")
            config = replace(
                GPTConfig(),
                n_layer=raw["n_layer"],
                n_head=raw["n_head"],
                n_embd=raw["n_embd"],
                n_ctx=raw.get("n_positions", raw.get("n_ctx", 1024)),
                vocab_size=raw["vocab_size"],
                dropout=0.0,
            )
        except KeyError as e:
            raise Gpt2Error(f"the config lacks {e.args[0]!r}") from None
    for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size", "pad_vocab_multiple"):
        value = getattr(config, name)
        if type(value) is not int or value < 1:
            raise Gpt2Error(f"{name} must be a positive integer, got {value!r}")
    if config.n_embd % config.n_head:
        raise Gpt2Error(f"n_embd ({config.n_embd}) is not a multiple of n_head ({config.n_head})")
    if type(config.dropout) not in (int, float) or not 0 <= config.dropout < 1:
        raise Gpt2Error(f"dropout must be in [0, 1), got {config.dropout!r}")
    return config
