"""Training throughput with 1, 2, ... data-parallel processes (torchrun, gloo on a CPU).

    python bench/train_processes.py --nproc 1 2 1x1 [--pairs 10000] [--epochs 2] [--amp]

Trains the bundled models' recipe (bi-LSTM 256, general attention, input feeding, tied 256-d
embeddings, words seen twice, batches of 64 sentences in all) on the first --pairs pairs of Multi30k
de-en, once per entry of --nproc: N (or NxT: T threads a process, else cores / N) processes;
one process is ``python -m nmt train``, several ``torchrun --nproc-per-node N -m nmt train``. Reports the last epoch's
source + target tokens/s from metrics.jsonl (the first epoch also builds the kernels of new
shapes), with the CPU's model and flags. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["--emb-size", "256", "--hidden", "256", "--layers", "1", "--brnn", "--input-feed", "--no-bridge",
          "--dropout", "0.3", "--tie-embeddings", "--min-freq", "2", "--max-len", "50", "--batch-size", "64",
          "--optim", "adam", "--learning-rate", "0.001", "--label-smoothing", "0.1", "--max-grad-norm", "5",
          "--seed", "3435", "--attention", "general"]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    family, number = re.search(r"cpu family\s*:\s*(\d+)", info), re.search(r"\nmodel\s*:\s*(\d+)", info)
    flags = set((re.search(r"flags\s*:\s*(.*)", info) or re.match("()", "")).group(1).split())
    return (f"{model.group(1) if model else 'unknown CPU'} (family {family.group(1) if family else '?'}, model "
            f"{number.group(1) if number else '?'}), {os.cpu_count()} cores; flags: "
            f"{' '.join(f for f in FLAGS if f in flags) or 'none of ' + ' '.join(FLAGS)}")


def subset(data: Path, out: Path, pairs: int) -> dict[str, Path]:
    files = {}
    for split, n in (("train", pairs), ("val", 0)):
        for lang in ("de", "en"):
            with gzip.open(data / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = f.readlines()
            path = out / f"{split}.{lang}.gz"
            path.write_bytes(gzip.compress("".join(lines[:n] if n else lines).encode()))
            files[split, lang] = path
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    p.add_argument("--nproc", nargs="+", default=["1", "2"], help="process counts, N or NxT (T threads each)")
    p.add_argument("--pairs", type=int, default=10000, help="training pairs (0: all)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--valid-bleu-sents", type=int, default=100)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu()}")
    import torch

    print(f"torch {torch.__version__}; {args.pairs or 'all'} pairs, {args.epochs} epochs, amp {args.amp}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = subset(Path(args.data), Path(tmp), args.pairs)
        for i, entry in enumerate(args.nproc):
            n, _, t = entry.partition("x")
            n = int(n)
            threads = int(t) if t else max(1, cores // n)
            run = Path(tmp) / f"run{i}"
            cmd = ["-m", "nmt", "train", *RECIPE, "--train-src", str(files["train", "de"]),
                   "--train-tgt", str(files["train", "en"]), "--valid-src", str(files["val", "de"]),
                   "--valid-tgt", str(files["val", "en"]), "--epochs", str(args.epochs), "--threads", str(threads),
                   "--valid-bleu-sents", str(args.valid_bleu_sents), "--save-dir", str(run),
                   "--amp" if args.amp else "--no-amp"]
            if n > 1:
                cmd = ["-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
                       "--master-port", str(29400 + n), *cmd]
            env = {**os.environ, "NMT_PROGRESS": "0", "OMP_NUM_THREADS": str(threads)}
            start = time.perf_counter()
            r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if r.returncode:
                sys.exit(f"{n} processes failed:\n{r.stderr[-3000:]}")
            params = re.search(r"model: (\d+) parameters", r.stderr)
            if i == 0 and params:
                print(f"model: {int(params.group(1)) / 1e6:.2f} M parameters", flush=True)
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            tok = last["src_tokens_per_s"] + last["tgt_tokens_per_s"]
            rows.append((n, threads, tok, last["tgt_tokens_per_s"], last["epoch_time_s"], wall))
            print(f"{n} process(es) x {threads} thread(s): {tok:,.0f} tokens/s (target {last['tgt_tokens_per_s']:,.0f}), "
                  f"last epoch {last['epoch_time_s']:.1f} s, whole run {wall:.0f} s", flush=True)
    base = rows[0][2]
    print("\n| processes × threads | source + target tokens/s | target tokens/s | × first row | last epoch | whole run |")
    print("|---|---|---|---|---|---|")
    for n, threads, tok, tgt, epoch_s, wall in rows:
        print(f"| {n} × {threads} | {tok:,.0f} | {tgt:,.0f} | {tok / base:.2f} | {epoch_s:.1f} s | {wall:.0f} s |")


if __name__ == "__main__":
    main()
