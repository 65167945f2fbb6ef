"""The `gpt2 pretrain` stage: a tokens artifact in, a model artifact out, from one CPU to many GPUs.

A run is identified by its tokens and the settings that change the weights (``TrainConfig.run_identity``).
Its checkpoints live in ``$GPT2_HOME/model/.runs/<id>/`` and hold model, optimizer, RNG states and the
step (the data position: batches are addressed by step). Rerunning the same command continues from the
newest checkpoint at or before ``--max-steps``, and the losses are the same as those of an uninterrupted
run; ``--restart`` ignores the checkpoints, ``--resume`` insists on one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import torch

from gpt2cli.artifacts import Artifact, Published, Store, artifact_input, fingerprint, hold_lock, write_atomic
from gpt2cli.bpe.shards import TokenShard, validation_gap
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.console import progress
from gpt2cli.errors import Gpt2Error, LockHeld, Terminated, UsageError
from gpt2cli.model import GPT, GPTConfig, config_for, fast_dtype
from gpt2cli.train import distributed
from gpt2cli.train.checkpoint import (
    CheckpointError,
    discard_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    usable_checkpoints,
)
from gpt2cli.train.config import TrainConfig
from gpt2cli.train.data import Batches, check_token_ids, fits
from gpt2cli.train.runs import LOCK, published_models, record_published, run_directory, run_id_of

log = logging.getLogger(__name__)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``learning_rate``, then cosine decay to ``min_lr`` at ``lr_decay_steps``."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress_ = (step - cfg.warmup_steps) / max(decay_steps - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress_)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorms: parameters of one dimension)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda" or None
    )


def flops_per_token(config: GPTConfig, n_params: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the weights plus attention (PaLM, appendix B)."""
    return 6 * n_params + 12 * config.n_layer * config.n_embd * seq_len


_GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's matmul peak: a table for known GPUs (dense bf16), else measured with a large matmul."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in _GPU_BF16_PEAK.items():
            if key in name:
                return value
    n = 1024
    generator = torch.Generator(device=device).manual_seed(0)  # the global RNG drives dropout: leave it alone
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
    a @ b  # warm up
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def training_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bfloat16 autocast where the device runs it fast (see ``fast_dtype``), unless told otherwise."""
    if cfg.dtype == "float32":
        return torch.float32
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    return fast_dtype(device)


def _tokenizer_of(store: Store, tokens: Artifact) -> Artifact:
    """The very tokenizer the tokens were encoded with (by manifest checksum, not just by version name: a
    different tokenizer under the same name would publish a model with the wrong vocabulary files)."""
    recorded = [i for i in tokens.inputs if i.get("ref", "").startswith("tokenizer@")]
    if not recorded:
        raise Gpt2Error(f"{tokens.ref} does not record the tokenizer it was encoded with")
    ref, sha = recorded[0]["ref"], recorded[0].get("manifest_sha256")
    try:
        tokenizer = store.recorded(tokens, recorded[0])
    except UsageError:
        home = recorded[0].get("home") or tokens.home
        raise Gpt2Error(f"{tokens.ref} was encoded with {ref}, which is gone from {home}") from None
    if tokenizer.manifest_sha256 != sha:
        raise Gpt2Error(
            f"{tokens.ref} was encoded with a different {ref} (manifest sha256 {sha}, now "
            f"{tokenizer.manifest_sha256}): re-tokenize with the current tokenizer"
        )
    return tokenizer


class _Run:
    """State of one training run, on one process."""

    def __init__(self, store: Store, tokens: Artifact, cfg: TrainConfig, ctx: distributed.Context):
        self.store, self.tokens, self.cfg, self.ctx = store, tokens, cfg, ctx
        self.tokenizer_artifact = _tokenizer_of(store, tokens)
        self.tokenizer = Tokenizer.load(self.tokenizer_artifact)
        self.train_shard = TokenShard.open(tokens.file("train.bin"))
        self.val_shard = TokenShard.open(tokens.file("val.bin")) if tokens.summary.get("val_tokens") else None
        for shard in filter(None, (self.train_shard, self.val_shard)):
            if shard.vocab_size != self.tokenizer.vocab_size:
                raise Gpt2Error(
                    f"{tokens.ref} was encoded with a {shard.vocab_size}-token vocabulary but its tokenizer "
                    f"{self.tokenizer_artifact.ref} has {self.tokenizer.vocab_size}"
                )
        self.model_config = config_for(
            cfg.model_size,
            n_ctx=cfg.n_ctx,
            vocab_size=self.tokenizer.vocab_size,
            dropout=cfg.dropout,
            pad_vocab_multiple=64 if ctx.device.type == "cuda" else 1,  # padding pays off on GPUs only
        )
        self.seq_len = cfg.seq_len or self.model_config.n_ctx
        if self.seq_len > self.model_config.n_ctx:
            raise UsageError(f"seq-len {self.seq_len} is longer than the model's context ({self.model_config.n_ctx})")
        sequences, rest = divmod(cfg.global_batch_tokens, self.seq_len)
        per_pass = cfg.micro_batch * ctx.world
        if rest or sequences % per_pass:
            raise UsageError(
                f"global-batch-tokens {cfg.global_batch_tokens} must be a multiple of seq-len x micro-batch x "
                f"processes = {self.seq_len} x {cfg.micro_batch} x {ctx.world} = {self.seq_len * per_pass}"
            )
        self.accum = sequences // per_pass
        self.dtype = training_dtype(cfg, ctx.device)
        self.run_id = fingerprint("model-run", cfg.run_identity(), [artifact_input(tokens)])[:16]
        self.run_dir = run_directory(store, self.run_id)
        self.sharded = cfg.fsdp and ctx.world > 1
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False

    # -- pieces of a step ------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.dtype)

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
        with self.autocast():
            return model(x, targets=y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> float | None:
        if self.val_shard is None or not fits(self.val_shard, self.seq_len):
            return None
        batches = Batches(self.val_shard, self.seq_len, self.cfg.micro_batch, self.cfg.seed)
        model.eval()
        total = torch.zeros(2, device=self.ctx.device, dtype=torch.float64)
        for x, y, counted in batches.eval_batches(self.cfg.eval_batches, self.ctx.rank, self.ctx.world):
            loss = self.loss(model, x, y)
            if counted:
                total[0] += loss.double() * y.numel()
                total[1] += y.numel()
        model.train()
        distributed.all_reduce_sum(total)
        return (total[0] / total[1]).item()

    def sample(self, model: GPT, step: int) -> str:
        generator = torch.Generator(device=self.ctx.device).manual_seed(self.cfg.seed + step)
        start = torch.tensor([[self.tokenizer.eot_id]], device=self.ctx.device)
        model.eval()
        with self.autocast():
            ids = model.generate(start, self.cfg.sample_tokens, top_k=40, generator=generator)
        model.train()
        return self.tokenizer.decode(ids[0, 1:].tolist())

    def checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model_state, optimizer_state = _full_state(self, model, optimizer)  # collective under FSDP

        def save() -> None:
            state = {
                "step": step,
                "model": model_state,
                "optimizer": optimizer_state,
                "rng": {"torch": torch.get_rng_state()}
                | ({"cuda": torch.cuda.get_rng_state(self.ctx.device)} if self.ctx.device.type == "cuda" else {}),
                "history": json.dumps(self.history),
                "run_identity": json.dumps(self.cfg.run_identity(), sort_keys=True),
            }
            path = save_checkpoint(self.run_dir, step, state, self.cfg.keep_checkpoints)
            log.info("checkpoint at step %d: %s", step, path)

        distributed.from_main(save, self.ctx)  # the others wait for it, and fail with it


def pretrain(
    store: Store,
    *,
    tokens_ref: str,
    cfg: TrainConfig,
    resume: str = "auto",
    force: bool = False,
    wait: bool = False,
) -> Published | None:
    """Train (or continue training) and publish a `model` artifact; None on processes other than rank 0.

    ``resume``: "auto" continues from a checkpoint of the same run when there is one, "require" fails
    without one, "never" starts from scratch.
    """
    ctx = distributed.setup(cfg.device)
    if not ctx.is_main:
        logging.getLogger("gpt2cli").setLevel(logging.WARNING)  # one process speaks for the run
    if cfg.fsdp and ctx.world == 1:
        log.warning("--fsdp needs several processes (torchrun); training unsharded")
    try:
        tokens = store.resolve(tokens_ref, "tokens", option="--tokens")
        run = _Run(store, tokens, cfg.resolved(), ctx)
        params = {**asdict(run.cfg), "seq_len": run.seq_len, "model": asdict(run.model_config)}
        inputs = [artifact_input(tokens), artifact_input(run.tokenizer_artifact)]
        # decided once, by rank 0: a process that saw a model another run published a moment later would reuse it
        # and leave while the others train
        existing = None if force else distributed.from_main(lambda: _already_published(store, run, params, inputs), ctx)
        if existing is not None:
            return _reuse(store, existing, ctx, wait)
        with contextlib.ExitStack() as held:
            _hold_run_lock(held, run, wait)
            # a run that waited for the lock finds what the holder published
            late = None if force else distributed.from_main(lambda: _already_published(store, run, params, inputs), ctx)
            if late is not None:
                return _reuse(store, late, ctx, wait)
            model = _train(run, resume)
            if not ctx.is_main:
                return None
            published = store.produce(
                "model", params=params, inputs=inputs, build=lambda draft: _publish(run, model, draft.dir), force=True
            )
            record_published(run.run_dir, published.artifact)  # gc deletes a finished run once its models are gone
            return published
    finally:
        distributed.teardown()


LOCK_POLL_S = 2.0  # how often the processes of a job waiting for a run's lock look again


def _hold_run_lock(held: contextlib.ExitStack, run: _Run, wait: bool) -> None:
    """Take the run's lock, held by rank 0 for the job: all processes exit 75 when another run holds it. With
    ``wait`` a job of several processes looks again every ``LOCK_POLL_S`` rather than blocking rank 0 in the lock
    while the others block in a collective, which times out (10-30 minutes) long before a training run ends."""
    what = f"training run {run.run_id}"
    if run.ctx.world == 1:
        held.enter_context(hold_lock(run.run_dir / LOCK, what, wait=wait))
        return
    waiting = False
    while True:
        try:
            distributed.from_main(lambda: held.enter_context(hold_lock(run.run_dir / LOCK, what)), run.ctx)
            return
        except LockHeld as e:
            if not wait:
                raise
            if not waiting:
                log.info("%s; waiting (--wait)", str(e).split(";")[0])
                waiting = True
            time.sleep(LOCK_POLL_S)


def _reuse(store: Store, existing: Artifact, ctx: distributed.Context, wait: bool) -> Published | None:
    log.info("reusing %s: same tokens and settings, trained to step %s (--force publishes anew)",
             existing.ref, existing.summary.get("steps"))  # fmt: skip
    if not ctx.is_main:
        return None
    with store.lock("model", wait=wait):  # not while another run publishes, which marks its own version current
        store.mark_current(existing)
    return Published(existing, reused=True)


def _already_published(
    store: Store, run: _Run, params: dict[str, Any], inputs: list[dict[str, Any]]
) -> Artifact | None:
    """A model of these very settings, or of this run at this --max-steps (``_finished``): reused, not trained."""
    return store.reusable("model", params, inputs) or _finished(store, run)


def _finished(store: Store, run: _Run) -> Artifact | None:
    """The model this run already published at this --max-steps. With only bookkeeping settings changed (how often
    it evaluated, saved or logged) a rerun trains nothing: it would publish the same weights again, under
    settings that did not make them. The run is recognised by its id: a relative --home records another path for
    it than the same home named from elsewhere."""
    for ref, steps in reversed(published_models(run.run_dir).items()):
        if steps != run.cfg.max_steps:
            continue
        with contextlib.suppress(Gpt2Error):
            artifact = store.resolve(ref, "model")
            if run_id_of(artifact) == run.run_id and artifact.summary.get("steps") == steps:
                return artifact
    return None


def _train(run: _Run, resume: str) -> GPT:
    cfg, ctx = run.cfg, run.ctx
    for shard in filter(None, (run.train_shard, run.val_shard)):
        check_token_ids(shard, run.tokenizer.vocab_size)
    torch.manual_seed(cfg.seed)
    model = GPT(run.model_config).to(ctx.device)
    trained: torch.nn.Module = _wrap_distributed(model, run) if ctx.world > 1 else model
    optimizer = make_optimizer(model, cfg, ctx.device)
    start = _restore(run, model, optimizer, resume)
    distributed.from_main(lambda: _restart_metrics(run), ctx)
    if cfg.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    batches = Batches(run.train_shard, run.seq_len, cfg.micro_batch, cfg.seed)
    n_params = model.num_params()
    tokens_per_step = run.accum * cfg.micro_batch * run.seq_len * ctx.world
    flops_step = flops_per_token(run.model_config, n_params, run.seq_len) * tokens_per_step
    peak = peak_flops(ctx.device, run.dtype) * ctx.world
    log.info(
        "training %s (%s parameters) on %s x%d, %s, %d tokens/step (%d x %d x %d accumulation), steps %d..%d",
        cfg.model_size, f"{n_params:,}", ctx.device.type, ctx.world, run.dtype, tokens_per_step,
        cfg.micro_batch, run.seq_len, run.accum, start + 1, cfg.max_steps,
    )  # fmt: skip
    if ctx.is_main and (gap := validation_gap(run.tokens, run.seq_len)) is not None:
        log.warning("validation loss will not be computed (the run trains on without it): %s", gap)
    writer = _tensorboard(run, start) if ctx.is_main else None
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(run, "stop_requested", True))
    try:
        with progress("pretraining", total=cfg.max_steps - start, unit="steps") as bar:
            for step in range(start, cfg.max_steps):
                row = _step(run, trained, optimizer, batches, step, flops_step, peak)
                done = step + 1
                if done % cfg.eval_every == 0 or done == cfg.max_steps:
                    _check_weights(run, model, done)
                    row["val_loss"] = run.evaluate(trained)
                    if run.sharded or ctx.is_main:  # a sharded model needs every process for a forward pass
                        sample = run.sample(model, done)
                        log.info("step %d val loss %s | sample: %r", done, _fmt(row["val_loss"]), sample[:200])
                run.history.append(row)
                if ctx.is_main:
                    _log_row(run, row, writer)
                bar.advance()
                stop = _stop_requested(run)
                if done % cfg.checkpoint_every == 0 or done == cfg.max_steps or stop:
                    _check_weights(run, model, done)
                    run.checkpoint(done, model, optimizer)
                if stop:
                    raise Terminated(
                        f"stopped by SIGTERM after step {done}; checkpoint saved in {run.run_dir}; "
                        "run the same command again to resume"
                    )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if writer is not None:
            writer.close()
    if not run.sharded:
        return model
    model_state, _ = _full_state(run, model, None)
    plain = GPT(run.model_config)
    if ctx.is_main:
        plain.load_state_dict(model_state)
    return plain


def _step(
    run: _Run,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    step: int,
    flops_step: int,
    peak: float,
) -> dict[str, Any]:
    cfg, ctx = run.cfg, run.ctx
    started = time.perf_counter()
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro = batches.train_step(step, run.accum, ctx.rank, ctx.world)
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for m, (x, y) in enumerate(micro):
        sync = m == len(micro) - 1  # gradients are reduced across processes once, after the last micro-batch
        if run.sharded:
            model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        with contextlib.nullcontext() if sync or ctx.world == 1 or run.sharded else model.no_sync():  # type: ignore[operator]
            loss = run.loss(model, x, y) / run.accum
            loss.backward()
        loss_sum += loss.detach().double()
    distributed.all_reduce_sum(loss_sum)
    mean_loss = loss_sum.item() / ctx.world
    if not math.isfinite(mean_loss):
        _diverged(run, step + 1, f"loss is {mean_loss}")
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
    if not math.isfinite(grad_norm):  # a finite loss can have an overflowing gradient: it must not reach the weights
        _diverged(run, step + 1, f"gradient norm is {grad_norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - started
    tokens = run.accum * cfg.micro_batch * run.seq_len * ctx.world
    return {
        "step": step + 1,
        "loss": mean_loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": tokens / seconds,
        "mfu": flops_step / seconds / peak,
        "tokens_seen": (step + 1) * tokens,
    }


def _diverged(run: _Run, step: int, what: str) -> NoReturn:
    last = latest_checkpoint(run.run_dir, step - 1)
    kept = f"the last good checkpoint ({last.name}) is kept in {run.run_dir}" if last else "no checkpoint yet"
    raise Gpt2Error(f"{what} at step {step}: stopped; {kept}; lower the learning rate or check the data")


def _check_weights(run: _Run, model: torch.nn.Module, step: int) -> None:
    """Weights that overflowed are never sampled from or saved as a good checkpoint."""
    finite = torch.ones((), device=run.ctx.device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # a shard of each under FSDP
        finite = finite * torch.isfinite(local).all()
    if distributed.all_reduce_sum(1 - finite).item():
        _diverged(run, step, "the weights are no longer finite")


def _stop_requested(run: _Run) -> bool:
    """Every process stops at the same step when any of them received SIGTERM."""
    flag = torch.tensor([1.0 if run.stop_requested else 0.0], device=run.ctx.device)
    return bool(distributed.all_reduce_sum(flag).item())


def _load_weights(run: _Run, model: GPT, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if run.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])


def _restore(run: _Run, model: GPT, optimizer: torch.optim.Optimizer, resume: str) -> int:
    """Load the newest readable checkpoint; a damaged one (a truncated file, or tensors that do not fit this model
    and optimizer) is skipped with a warning: a later good one overwrites whatever it had begun to load."""
    candidates = distributed.from_main(lambda: _checkpoints_to_try(run, resume), run.ctx)
    if not candidates:
        if resume == "require":
            raise UsageError(f"--resume: no checkpoint of this run in {run.run_dir} (same tokens and settings)")
        return 0
    state = None
    for found in candidates:
        try:
            state = load_checkpoint(found, run.ctx.device)
            _load_weights(run, model, optimizer, state)
            break
        except CheckpointError as e:
            log.warning("%s: skipping it", e)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # loads, but is not this run's model/optimizer
            log.warning("%s does not fit this model and optimizer (%s): skipping it", found, str(e).splitlines()[0])
        state = None
    if state is None:
        raise Gpt2Error(
            f"no checkpoint of this run in {run.run_dir} is readable (newest: {candidates[0].name}); "
            "--restart trains from step 0"
        )
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if "cuda" in state["rng"] and run.ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), run.ctx.device)
    run.history = json.loads(state["history"])
    log.info("resuming from %s (step %d)", found, state["step"])
    return int(state["step"])


def _checkpoints_to_try(run: _Run, resume: str) -> list[Path]:
    """The run's usable checkpoints, newest first; none after --restart, which deletes them."""
    if resume != "never":
        return usable_checkpoints(run.run_dir, run.cfg.max_steps)
    if discarded := discard_checkpoints(run.run_dir):
        log.info("--restart: deleted the run's %d checkpoints; training from step 0", discarded)
    return []


def _wrap_distributed(model: GPT, run: _Run) -> torch.nn.Module:
    """DDP (a full copy per process), or FSDP2 sharding of each block and the embeddings (--fsdp)."""
    if run.sharded:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [run.ctx.device.index] if run.ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _full_state(
    run: _Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Unsharded model and optimizer state; under FSDP every process must call this (it gathers)."""
    if not run.sharded:
        return model.state_dict(), optimizer.state_dict() if optimizer else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, optimizer, options=options)


def _tensorboard(run: _Run, start: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # events after the step training continues from were written by a run that was cut short: TensorBoard drops them
    return SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=start + 1)


def _restart_metrics(run: _Run) -> None:
    """The run directory's metrics.jsonl holds the rows of the restored history only: a run killed after its
    last checkpoint had written rows that the resumed run writes again."""
    path = run.run_dir / "metrics.jsonl"
    if path.exists():
        write_atomic(path, "".join(json.dumps(row) + "\n" for row in run.history).encode())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _log_row(run: _Run, row: dict[str, Any], writer: Any) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss"):
            if row.get(key) is not None:
                writer.add_scalar(key, row[key], row["step"])
    if row["step"] % run.cfg.log_every == 0 or row["step"] == run.cfg.max_steps:
        log.info(
            "step %d/%d loss %.4f lr %.2e grad norm %.3f %s tokens/s MFU %.1f%%",
            row["step"], run.cfg.max_steps, row["loss"], row["lr"], row["grad_norm"],
            f"{row['tokens_per_s']:,.0f}", 100 * row["mfu"],
        )  # fmt: skip


def _publish(run: _Run, model: GPT, out: Path) -> dict[str, Any]:
    model.save(out)
    for name in ("encoder.json", "vocab.bpe", "tokenizer.json"):
        (out / name).write_bytes(run.tokenizer_artifact.file(name).read_bytes())
    with open(out / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in run.history)
    _plot_losses(run.history, out / "loss.png")
    evals = [r for r in run.history if r.get("val_loss") is not None]
    last = run.history[-1]
    timed = run.history[1:] or run.history  # the first step includes warm-up costs
    return {
        "model_size": run.cfg.model_size,
        "parameters": model.num_params(),
        "steps": last["step"],
        "tokens_seen": last["tokens_seen"],
        "train_loss": round(last["loss"], 4),
        "val_loss": round(evals[-1]["val_loss"], 4) if evals else None,
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in timed) / len(timed), 1),
        "mfu": round(sum(r["mfu"] for r in timed) / len(timed), 4),
        "tokenizer": run.tokenizer_artifact.ref,
        "run_dir": str(run.run_dir.resolve()),
    }


def _plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train", linewidth=1)
    evals = [r for r in history if r.get("val_loss") is not None]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
