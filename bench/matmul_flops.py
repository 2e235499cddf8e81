"""Achieved GFLOP/s of one training batch's big matrix products on this CPU, and the floor they set.

    python bench/matmul_flops.py [--batch 64 --src-len 13 --tgt-len 14 --emb 256 --hidden 256 --vocab 6225]
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/matmul_flops.py

The model is the bundled recipe's (bi-LSTM encoder of ``hidden`` split over two directions, an LSTM
decoder with input feeding, general attention, a ``vocab``-word output layer); the defaults are
Multi30k's average batch (64 sentences of 13 source and 14 target tokens with ``</s>``). Every product
of the forward pass is timed as the matrix product it is, and its two backward products (the
gradient of the input and of the weight) likewise; each is the best of ``--repeats`` runs. Printed:
per product the FLOPs of one batch and the GFLOP/s reached, then the batch's total and the time those
products alone take at the rates reached: the floor of a training step on this CPU (the rest of a
step, the elementwise work, the optimizer and Python, comes on top). The second command runs the
AVX2 kernels of MKL, oneDNN and ATen on a CPU that has more: it shows what AVX2 kernels reach on this
core, not what an AVX2-only CPU (other clocks, caches, FMA units) reaches. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nmt.device import cpu_description  # noqa: E402

ISA_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@dataclass
class Product:
    """``calls`` products of an (m, k) by (k, n) matrix in one batch's forward pass."""

    name: str
    m: int
    k: int
    n: int
    calls: int = 1

    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.calls


def products(batch: int, src: int, tgt: int, emb: int, hidden: int, vocab: int) -> list[Product]:
    """The forward pass's matrix products (Luong et al. 2015 with input feeding; a bi-LSTM encoder)."""
    h = hidden // 2  # each encoder direction
    return [
        Product("encoder LSTM input (both directions)", batch * src, emb, 4 * h, 2),
        Product("encoder LSTM recurrence, per step", batch, h, 4 * h, 2 * src),
        Product("decoder LSTM [y; h~] + h, per step", batch, emb + 2 * hidden, 4 * hidden, tgt),
        Product("attention W_a h_t (general)", batch * tgt, hidden, hidden),
        Product("attention scores h_s . W_a h_t", tgt, hidden, src, batch),
        Product("attention context a_t . h_s", tgt, src, hidden, batch),
        Product("h~ = tanh(W_c [c; h])", batch * tgt, 2 * hidden, hidden),
        Product("output layer", batch * tgt, hidden, vocab),
    ]


def seconds(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """The best time of one (m, k) @ (k, n) product."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def measure(p: Product, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(FLOPs, seconds) of the product in one batch, forward and backward: Y = X W, then dX = dY W^T
    and dW = X^T dY (the same FLOPs each, other shapes)."""
    t = seconds(p.m, p.k, p.n, dtype, repeats) + seconds(p.m, p.n, p.k, dtype, repeats) \
        + seconds(p.k, p.m, p.n, dtype, repeats)
    return 3 * p.flops(), t * p.calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--src-len", type=int, default=13)
    ap.add_argument("--tgt-len", type=int, default=14)
    ap.add_argument("--emb", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=6225)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    isa = ", ".join(f"{v}={os.environ[v]}" for v in ISA_VARIABLES if v in os.environ) or "none"
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ATen kernels {torch.backends.cpu.get_cpu_capability()}; ISA limits: {isa}")
    prods = products(args.batch, args.src_len, args.tgt_len, args.emb, args.hidden, args.vocab)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print("\n| product (forward + 2 backward) | shape m×k×n × calls | GFLOP a batch | "
          + " | ".join(f"{d} GFLOP/s" for d in args.dtypes) + " |")
    print("|---|---|---:|" + "---:|" * len(args.dtypes))
    totals = dict.fromkeys(args.dtypes, 0.0)
    all_flops = 0.0
    for p in prods:
        rates = []
        for d in args.dtypes:
            flops, t = measure(p, dtypes[d], args.repeats)
            totals[d] += t
            rates.append(f"{flops / t / 1e9:,.0f}")
        all_flops += 3 * p.flops()
        print(f"| {p.name} | {p.m}×{p.k}×{p.n} × {p.calls} | {3 * p.flops() / 1e9:.2f} | " + " | ".join(rates) + " |")
    output = 3 * prods[-1].flops()
    print(f"\none batch: {all_flops / 1e9:.2f} GFLOP in these products ({output / all_flops:.0%} in the output layer)")
    for d in args.dtypes:
        print(f"{d}: the products alone take {totals[d] * 1e3:.1f} ms a batch "
              f"({all_flops / totals[d] / 1e9:,.0f} GFLOP/s overall): the floor of a training step here")


if __name__ == "__main__":
    main()
