"""Memory over model load/evict cycles: load a checkpoint, translate one sentence, drop it; repeat.

    python bench/load_cycles.py [--model checkpoints/de-en-general] [--cycles 100] [--int8] [--no-trace]

Each cycle goes through a ``ModelCache`` of capacity 2 under a new key, so the cache evicts a model
every time, as the app's does when visitors name more models than it keeps. Prints the process'
resident memory (RSS) every 10 cycles; flat figures mean nothing outlives its model. Asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.device import cpu_description  # noqa: E402
from nmt.serving.catalog import ModelCache  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "checkpoints/de-en-general"))
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--no-trace", dest="trace", action="store_false")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trim", action="store_true", help="return freed heap memory to the system before measuring")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    torch.set_num_threads(args.threads)
    cache = ModelCache(capacity=2)
    start = time.perf_counter()
    print(f"model {args.model}, int8 {args.int8}, trace {args.trace}, {args.cycles} cycles")
    for cycle in range(1, args.cycles + 1):
        translator = cache.get(("cycle", cycle), lambda: Translator.load(args.model, device="cpu"))
        translator.translate(["Ein Hund läuft über die Wiese."], beam_size=5, int8=args.int8, trace=args.trace)
        del translator
        if cycle == 1 or cycle % 10 == 0:
            gc.collect()
            if args.trim:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            print(f"cycle {cycle:4d}: RSS {rss_mib():7.1f} MiB  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
