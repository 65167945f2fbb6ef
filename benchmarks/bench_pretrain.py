"""Training-step throughput: gpt2cli's GPT vs transformers' GPT2LMHeadModel, same config, batch and dtype.

One optimizer step = forward, cross-entropy, backward, gradient clipping, AdamW step. Both sides run
interleaved in one process on the same random token batches; the script prints tokens/s for each, the
ratio, and MFU against the matmul peak measured on this machine.

    .venv/bin/python benchmarks/bench_pretrain.py                       # CPU, fp32 and bf16
    .venv/bin/python benchmarks/bench_pretrain.py --size small --steps 6
    .venv/bin/python benchmarks/bench_pretrain.py --device cuda --size 124M --batch 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from gpt2cli.model import GPT, config_for, hf_config
from gpt2cli.train.loop import flops_per_token, peak_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def ours_step(model, optimizer, x, y, autocast):
    with autocast():
        loss = model(x, targets=y)  # what `gpt2 pretrain` runs
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def hf_step(model, optimizer, x, y, autocast):
    with autocast():
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels itself
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()

    import transformers

    device = torch.device(args.device)
    pad = 64 if device.type == "cuda" else 1
    config = config_for(args.size, vocab_size=args.vocab, pad_vocab_multiple=pad, n_ctx=max(args.seq_len, 1))
    torch.manual_seed(0)
    ours = GPT(config).to(device)
    plain = {k: v for k, v in hf_config(config).items() if k != "gpt2cli"}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**plain, attn_implementation="sdpa")).to(device)
    models = {"gpt2cli": (ours, ours_step), "transformers": (hf, hf_step)}
    if args.compile:
        models = {k: (torch.compile(m), step) for k, (m, step) in models.items()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
                  for k, (m, _) in models.items()}  # fmt: skip
    n_params = ours.num_params()
    flops = flops_per_token(config, n_params, args.seq_len)
    tokens = args.batch * args.seq_len
    print(f"model {args.size}: {n_params:,} parameters, vocab {args.vocab}, batch {args.batch} x {args.seq_len}, "
          f"device {device}, threads {torch.get_num_threads()}, compile {args.compile}")  # fmt: skip
    for name in args.dtypes:
        dtype = DTYPES[name]

        def autocast(dtype=dtype):
            if dtype == torch.float32:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device.type, dtype=dtype)

        peak = peak_flops(device, dtype)
        timings: dict[str, list[float]] = {k: [] for k in models}
        for i in range(args.warmup + args.steps):
            x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=device)
            for key, (model, step) in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                step(model, optimizers[key], x[:, :-1], x[:, 1:], autocast)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    timings[key].append(time.perf_counter() - started)
        # the median step: this machine's speed drifts in bursts of a few seconds, which a mean over a few
        # multi-second steps absorbs unevenly between the two sides
        rates = {k: tokens / sorted(v)[len(v) // 2] for k, v in timings.items()}
        print(f"\n{name}: matmul peak measured {peak / 1e12:.2f} TFLOP/s")
        print(f"{'model':<14}{'tokens/s':>12}{'s/step':>10}{'MFU':>8}")
        for key, rate in rates.items():
            print(f"{key:<14}{rate:>12,.0f}{tokens / rate:>10.3f}{flops * rate / peak:>8.1%}")
        each = " ".join(f"{t / o:.2f}" for o, t in zip(timings["gpt2cli"], timings["transformers"], strict=True))
        print(f"ratio gpt2cli / transformers: {rates['gpt2cli'] / rates['transformers']:.2f}x (median step); "
              f"per-step ratios {each}")  # fmt: skip


if __name__ == "__main__":
    main()
