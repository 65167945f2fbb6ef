"""GPU training throughput of GPT-2 124M with bf16 autocast, torch.compile and flash attention.

Runs the project's model, optimizer and step (`gpt2cli.train.loop`: AdamW on matrices, clipping) on random
token batches for a few hundred optimizer steps and prints tokens/s and MFU against the GPU's dense bf16
peak. Goal on an H200: at least 50% MFU. ``--loss fused`` (default) is what `gpt2 pretrain` runs,
``model(x, targets=y)`` (the chunked `linear_cross_entropy`); ``--loss plain`` takes the logits and
``F.cross_entropy``, which inductor fuses on its own: run both to see which one the GPU path should use.

    python benchmarks/gpu_pretrain.py                         # 124M, 16 x 1024 per micro-batch, 300 steps
    python benchmarks/gpu_pretrain.py --micro-batch 32 --steps 200 --no-compile
    python benchmarks/gpu_pretrain.py --device cpu --size tiny --seq-len 128 --steps 5   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn import functional as F

from gpt2cli.model import GPT, config_for
from gpt2cli.train.config import TrainConfig
from gpt2cli.train.loop import flops_per_token, make_optimizer, peak_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124M")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loss", choices=["fused", "plain"], default="fused")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    config = config_for(args.size, vocab_size=50257, pad_vocab_multiple=64)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, TrainConfig(), device)
    forward = model if args.no_compile else torch.compile(model)
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast(device_type=device.type, dtype=dtype)
    tokens_per_step = args.micro_batch * args.seq_len * args.accum
    flops = flops_per_token(config, model.num_params(), args.seq_len) * tokens_per_step
    peak = peak_flops(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.size} ({model.num_params():,} parameters) on {name}, {dtype}, compile {not args.no_compile}, "
          f"loss {args.loss}, {tokens_per_step:,} tokens/step, peak {peak / 1e12:.0f} TFLOP/s")  # fmt: skip
    data = torch.randint(0, 50257, (args.accum, args.micro_batch, args.seq_len + 1), device=device)
    timings = []
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for m in range(args.accum):
            x, y = data[m, :, :-1], data[m, :, 1:]
            with autocast if dtype != torch.float32 else contextlib.nullcontext():
                if args.loss == "fused":
                    loss = forward(x, targets=y) / args.accum
                else:
                    logits = forward(x)
            if args.loss == "plain":
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)) / args.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        if step >= args.warmup:
            timings.append(seconds)
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item() * args.accum:.3f} {tokens_per_step / seconds:>12,.0f} tokens/s "
                  f"MFU {flops / seconds / peak:.1%}")  # fmt: skip
    if timings:
        mean = sum(timings) / len(timings)
        print(f"\nmean over {len(timings)} steps: {tokens_per_step / mean:,.0f} tokens/s, "
              f"{mean * 1000:.0f} ms/step, MFU {flops / mean / peak:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
