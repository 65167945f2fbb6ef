"""Decoding's matrix products: gpt2cli's native kernel vs PyTorch's `F.linear`, on GPT-2 124M's weights.

One decoding step multiplies a few rows (samples x new positions) by every weight matrix of the model: the
12 blocks' four matrices and the 50,257-row output head, each read from memory once. Prints, for 1 to 8
rows in float32 and bfloat16, the time of one such pass and the weight bytes streamed per second, for
PyTorch and for the kernel, interleaved, median of the repeats.

    .venv/bin/python benchmarks/bench_native.py
    .venv/bin/python benchmarks/bench_native.py --rows 1 8 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from gpt2cli import native

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]  # (out, in), 124M


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lib = native.library()
    if lib is None:
        raise SystemExit("the native kernel is unavailable (no C compiler, or GPT2_NATIVE=0)")
    print(f"threads {torch.get_num_threads()}; one pass = the 49 weight matrices of GPT-2 124M")
    print(f"{'dtype':<10}{'rows':>5}{'torch ms':>10}{'GB/s':>7}{'native ms':>11}{'GB/s':>7}{'ratio':>8}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        g = torch.Generator().manual_seed(0)
        weights = [(torch.randn(o, i, generator=g) * 0.02).to(dtype) for o, i in SHAPES]
        biases = [torch.zeros(o, dtype=dtype) if o != 50257 else None for o, _ in SHAPES]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        for rows in args.rows:
            xs = {i: torch.randn(rows, i, generator=g).to(dtype) for i in (768, 3072)}
            calls = [(xs[w.size(1)], w, b) for w, b in zip(weights, biases, strict=True)]
            sides = {
                "torch": lambda calls=calls: [F.linear(x, w, b) for x, w, b in calls],
                "native": lambda calls=calls: [native.linear_rows(lib, x, w, b) for x, w, b in calls],
            }
            times: dict[str, list[float]] = {name: [] for name in sides}
            with torch.inference_mode():
                for fn in sides.values():
                    fn()  # warm up
                for _ in range(args.repeats):
                    for name, fn in sides.items():
                        started = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - started)
            t, n = statistics.median(times["torch"]), statistics.median(times["native"])
            print(f"{dtype_name:<10}{rows:>5}{t * 1e3:>10.1f}{nbytes / t / 1e9:>7.1f}"
                  f"{n * 1e3:>11.1f}{nbytes / n / 1e9:>7.1f}{t / n:>7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
