"""Latency of the look-inside calls for one sentence, next to plain translation, in one process.

    python bench/look_inside_speed.py [--model checkpoints/de-en-general] [--rounds 30] [--threads 1]

For a 15-word test sentence: ``translate`` (beam 5; fp32 with the traced step, and the default
engine: int8 for the bundled models, as the app runs it), ``beam_tree`` (the same search, recorded as a tree), ``score`` (forced decoding of the best
translation, with alternatives), ``translate(prefix=...)`` (its first three words forced) and
``neighbors`` (when the model has an index). The calls alternate round by round, so a noisy machine
slows them alike; medians and 90th percentiles in ms. Asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.device import cpu_description  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "multi30k"


def sentence_of(words: int, lang: str) -> str:
    with gzip.open(DATA / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as fh:
        return next(line.strip() for line in fh if len(line.split()) == words)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "checkpoints/de-en-general"))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    torch.set_num_threads(args.threads)
    from nmt import NMTError, Translator

    t = Translator.load(args.model, device="cpu")
    source = sentence_of(15, t.checkpoint.src_lang)
    [best] = t.translate([source], beam_size=5, replace_unk=False)
    prefix = " ".join(best.tokens[:3])
    calls = {
        "translate (fp32)": lambda: t.translate([source], beam_size=5, int8=False),
        "translate (the default: int8 where the checkpoint records it)": lambda: t.translate([source], beam_size=5),
        "beam_tree": lambda: t.beam_tree(source, beam_size=5),
        "score (alternatives 8)": lambda: t.score([source], [best.tokens], alternatives=8),
        "translate, 3-word prefix": lambda: t.translate([source], beam_size=5, prefix=[prefix]),
    }
    try:
        t.neighbors(source, position=2)
        calls["neighbors (k=10)"] = lambda: t.neighbors(source, position=2, k=10)
        calls["neighbors, given translation"] = lambda: t.neighbors(source, best.text, position=2, k=10)
    except NMTError as exc:
        print(f"(no neighbors: {exc})")
    for call in calls.values():  # warm up: traces, caches, the index
        call()
    times = {name: [] for name in calls}
    for r in range(args.rounds):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    print(f"{args.model}, {len(source.split())}-word sentence, beam 5, {args.threads} thread(s), {args.rounds} rounds")
    print(f"| call | median ms | p90 ms |\n|---|---:|---:|")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {statistics.median(values):.1f} | {values[int(0.9 * (len(values) - 1))]:.1f} |")


if __name__ == "__main__":
    main()
