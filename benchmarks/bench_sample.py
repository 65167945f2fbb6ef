"""Generation throughput: gpt2cli's `GPT.generate` vs transformers' `generate()`, same weights and settings.

Both sides continue the same prompts with top-k 40 sampling at temperature 1 (the paper's setting) for a
fixed number of new tokens (no early stop), at batch 1 and 8, in float32 and bfloat16. Prints new
tokens per second for each and the ratio; then, from the same runs, each tool in its default dtype, as a user
gets it: `gpt2 sample --dtype auto` (bfloat16 on CPUs with AMX, else float32) against transformers' float32.

    .venv/bin/python benchmarks/bench_sample.py                     # sizes 124M and mini, batch 1 and 8
    .venv/bin/python benchmarks/bench_sample.py --sizes 124M --batches 1 --new-tokens 128
    .venv/bin/python benchmarks/bench_sample.py --sizes 124M --batches 8 --same-prompt --prompt-tokens 500  # -n 8
    .venv/bin/python benchmarks/bench_sample.py --sizes 124M small --whole-head   # and ours without the head screen
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from gpt2cli import native
from gpt2cli.model import GPT, config_for, fast_dtype


def best_times(sides: list, repeats: int) -> list[float]:
    """Each side's best time, the sides interleaved per repeat so that a drift of the machine hits both."""
    best = [float("inf")] * len(sides)
    for _ in range(repeats):
        for i, fn in enumerate(sides):
            started = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["124M", "mini"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--same-prompt", action="store_true", help="every row continues one prompt (gpt2 sample -n)")
    parser.add_argument(
        "--whole-head", action="store_true", help="also ours computing every logit (no screen of the head, head.c)"
    )
    args = parser.parse_args()

    import transformers

    print(f"threads {torch.get_num_threads()}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"top-k 40, temperature 1, best of {args.repeats} interleaved repeats, "
          f"{'one prompt for all rows, ' if args.same_prompt else ''}"
          f"native decoding kernel {'on' if native.library() else 'off'}")  # fmt: skip
    whole = f"{'whole head':>12}{'screen':>8}" if args.whole_head else ""
    print(f"{'size':<6}{'dtype':<10}{'batch':>6}{'gpt2cli tok/s':>15}{'HF tok/s':>11}{'ratio':>8}{whole}")
    rates: dict[tuple[str, str, int], tuple[float, float]] = {}
    for size in args.sizes:
        config = config_for(size, vocab_size=50257, pad_vocab_multiple=1)
        torch.manual_seed(0)
        ours_fp32 = GPT(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            ours_fp32.save(tmp)
            hf_fp32 = transformers.GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa").eval()
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            ours, hf = ours_fp32.to(dtype), hf_fp32.to(dtype)
            for batch in args.batches:
                rows = 1 if args.same_prompt else batch
                prompt = torch.randint(0, 50257, (rows, args.prompt_tokens)).repeat(batch // rows, 1)

                def run_ours(ours=ours, prompt=prompt):
                    with torch.inference_mode():
                        g = torch.Generator().manual_seed(0)
                        ours.generate(prompt, args.new_tokens, top_k=40, generator=g)

                def run_hf(hf=hf, prompt=prompt):
                    torch.manual_seed(0)
                    with torch.inference_mode():
                        hf.generate(
                            prompt,
                            attention_mask=torch.ones_like(prompt),
                            max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens,
                            do_sample=True,
                            top_k=40,
                            temperature=1.0,
                            pad_token_id=50256,
                        )

                def run_whole_head(run_ours=run_ours):
                    screen, native.SCREEN_MAX_FRACTION = native.SCREEN_MAX_FRACTION, 1 << 62
                    try:
                        run_ours()
                    finally:
                        native.SCREEN_MAX_FRACTION = screen

                sides = [run_ours, run_hf, run_whole_head] if args.whole_head else [run_ours, run_hf]
                for side in sides:  # warm up
                    side()
                new = batch * args.new_tokens
                ours_rate, hf_rate, *whole_rate = [new / t for t in best_times(sides, args.repeats)]
                rates[size, dtype_name, batch] = ours_rate, hf_rate
                gain = f"{whole_rate[0]:>12,.0f}{ours_rate / whole_rate[0]:>7.2f}x" if whole_rate else ""
                print(f"{size:<6}{dtype_name:<10}{batch:>6}{ours_rate:>15,.0f}{hf_rate:>11,.0f}"
                      f"{ours_rate / hf_rate:>7.2f}x{gain}")  # fmt: skip
    ours_default = str(fast_dtype(torch.device("cpu"))).removeprefix("torch.")
    defaults = [
        (size, batch, rates[size, ours_default, batch][0], rates[size, "float32", batch][1])
        for size, dtype_name, batch in rates
        if dtype_name == "float32" and (size, ours_default, batch) in rates
    ]
    if defaults:
        print(f"\ndefault dtypes: gpt2cli {ours_default} (--dtype auto on this CPU), transformers float32")
        print(f"{'size':<6}{'batch':>6}{'gpt2cli tok/s':>15}{'HF tok/s':>11}{'ratio':>8}")
        for size, batch, ours_rate, hf_rate in defaults:
            print(f"{size:<6}{batch:>6}{ours_rate:>15,.0f}{hf_rate:>11,.0f}{ours_rate / hf_rate:>7.2f}x")


if __name__ == "__main__":
    main()
