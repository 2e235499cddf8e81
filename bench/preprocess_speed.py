"""Preprocessing and reading it back: pairs/s of tokenizing with 1 and with N worker processes
(``python -m nmt preprocess``), then an epoch of ``make_batch`` over ``batch_indices`` from the
preprocessed folder (``ShardedDataset``: memory-mapped shards) against ``ParallelDataset`` from the
raw files (tokenized at every run), with the peak RSS of each.

    nice -n 15 python bench/preprocess_speed.py [--data ../shared/data/multi30k] [--workers 2] [--repeat 1]

Each measurement runs in a fresh process, so that each peak RSS is its own (``ru_maxrss``; for the
tokenizing workers, the largest worker's). RSS counts the mapped shard pages a process has touched
(``RssFile``: page cache, dropped first under memory pressure) apart from its own memory (``RssAnon``).
``--repeat N`` trains on the corpus N times over (a larger corpus, the same sentences). Prints
figures; asserts nothing. On a shared machine compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_kib(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (VmHWM: peak RSS; RssAnon, RssFile: now)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0])
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the tokenizing workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def memory() -> dict:
    now = status_kib("RssAnon", "RssFile")
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_mib": now.get("RssAnon", 0) / 1024, "file_mib": now.get("RssFile", 0) / 1024,
            "children_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def epochs(data, batch_size: int, n: int) -> dict:
    """Median seconds of an epoch: ``batch_indices`` (shuffled, seed per epoch) and every ``make_batch``."""
    times, batches, pairs = [], 0, 0
    for epoch in range(n):
        start = time.perf_counter()
        chunks = data.batch_indices(batch_size, True, epoch + 1)
        for chunk in chunks:
            data.make_batch(chunk)
        times.append(time.perf_counter() - start)
        batches, pairs = len(chunks), sum(map(len, chunks))
    seconds = statistics.median(times)
    return {"epoch_s": seconds, "batches_per_s": batches / seconds, "pairs_per_s": pairs / seconds}


def task_tokenize(args) -> dict:
    from nmt.config import VocabConfig
    from nmt.preprocess import preprocess

    start = time.perf_counter()
    m = preprocess(args.src, args.tgt, args.out, args.src_lang, args.tgt_lang, args.max_len,
                   VocabConfig(min_freq=args.min_freq), shards=args.shards, workers=args.workers, overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs": m["pairs"], "pairs_per_s": m["pairs"] / seconds, **memory()}


def task_tokenize_only(args) -> dict:
    from nmt.data import read_parallel
    from nmt.preprocess import tokenize_parallel

    src, tgt = read_parallel(args.src, args.tgt)
    start, cpu = time.perf_counter(), cpu_seconds()
    pairs = len(tokenize_parallel(src, tgt, args.src_lang, args.tgt_lang, args.max_len, args.workers)[0])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_s": cpu_seconds() - cpu, "pairs": pairs, "pairs_per_s": pairs / seconds,
            **memory()}


def task_sharded(args) -> dict:
    from nmt.preprocess import ShardedDataset

    start = time.perf_counter()
    data = ShardedDataset.open(args.out)
    opened = time.perf_counter() - start
    return {"load_s": opened, "pairs": len(data), **epochs(data, args.batch_size, args.epochs), **memory()}


def task_raw(args) -> dict:
    from nmt.data import ParallelDataset
    from nmt.preprocess import ShardedDataset

    vocab = ShardedDataset.open(args.out)  # (its vocabularies: the same ids)
    start = time.perf_counter()
    data = ParallelDataset.from_files(args.src, args.tgt, args.src_lang, args.tgt_lang, vocab.src_vocab,
                                      vocab.tgt_vocab, args.max_len)
    loaded = time.perf_counter() - start
    del vocab
    return {"load_s": loaded, "pairs": len(data), **epochs(data, args.batch_size, args.epochs), **memory()}


def task_baseline(args) -> dict:
    import nmt.data  # (what every task imports: torch, numpy, sacremoses)
    import nmt.preprocess  # noqa: F401

    return memory()


TASKS = {"tokenize": task_tokenize, "tokenize-only": task_tokenize_only, "sharded": task_sharded, "raw": task_raw, "baseline": task_baseline}


def run(task: str, args, **overrides) -> dict:
    """One task in a fresh process; its JSON result."""
    argv = [sys.executable, __file__, "--task", task]
    for key, value in {**vars(args), **overrides}.items():
        if key != "task" and value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def corpus(args, folder: Path) -> None:
    """The training files, ``--repeat`` times over (plain text)."""
    for lang, name in ((args.src_lang, "src"), (args.tgt_lang, "tgt")):
        with gzip.open(Path(args.data) / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            text = f.read()
        path = folder / f"train.{lang}"
        path.write_text(text * args.repeat, encoding="utf-8")
        setattr(args, name, str(path))


def report(args) -> None:
    from nmt.device import cpu_description

    with tempfile.TemporaryDirectory() as tmp:
        corpus(args, Path(tmp))
        args.out = str(Path(tmp) / "pre")
        base = run("baseline", args)
        one = run("tokenize", args, workers=1)
        many = run("tokenize", args)
        only = [run("tokenize-only", args, workers=1), run("tokenize-only", args)]
        sharded, raw = run("sharded", args), run("raw", args)
    print(f"{cpu_description()}; Multi30k train x{args.repeat}: {one['pairs']:,} pairs kept, {args.shards} shards; "
          f"baseline process (imports) {base['peak_rss_mib']:.0f} MiB RSS")
    print(f"tokenize+index+write, 1 worker:  {one['pairs_per_s']:8,.0f} pairs/s ({one['seconds']:.1f} s), "
          f"peak RSS {one['peak_rss_mib']:.0f} MiB")
    print(f"tokenize+index+write, {args.workers} workers: {many['pairs_per_s']:8,.0f} pairs/s ({many['seconds']:.1f} s), "
          f"peak RSS {many['peak_rss_mib']:.0f} MiB (largest worker {many['children_peak_mib']:.0f} MiB); "
          f"{many['pairs_per_s'] / one['pairs_per_s']:.2f}x")
    for workers, r in zip((1, args.workers), only):
        print(f"tokenizing alone, {workers} worker(s): {r['pairs_per_s']:8,.0f} pairs/s ({r['seconds']:.1f} s wall, "
              f"{r['cpu_s']:.1f} s CPU: {r['cpu_s'] / r['seconds']:.2f} cores busy)")
    print(f"tokenizing alone, {args.workers} workers / 1: {only[1]['pairs_per_s'] / only[0]['pairs_per_s']:.2f}x")
    for name, r in (("ShardedDataset (folder)", sharded), ("ParallelDataset (raw files)", raw)):
        print(f"{name:28s} load {r['load_s']:6.2f} s; epoch of make_batch (batch {args.batch_size}): "
              f"{r['batches_per_s']:7,.0f} batches/s, {r['pairs_per_s']:9,.0f} pairs/s; peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_mib'] - base['peak_rss_mib']:.0f} over baseline), "
              f"at the end anon {r['anon_mib']:.0f} MiB, mapped files {r['file_mib']:.0f} MiB")
    print(f"ratios, folder / raw: load {raw['load_s'] / sharded['load_s']:.0f}x faster, make_batch "
          f"{sharded['pairs_per_s'] / raw['pairs_per_s']:.2f}x the pairs/s, peak RSS over baseline "
          f"{(sharded['peak_rss_mib'] - base['peak_rss_mib']) / max(raw['peak_rss_mib'] - base['peak_rss_mib'], 1):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/multi30k"))
    p.add_argument("--src-lang", default="de")
    p.add_argument("--tgt-lang", default="en")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--min-freq", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="epochs of make_batch timed (the median is shown)")
    p.add_argument("--repeat", type=int, default=1, help="the training corpus this many times over")
    p.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--tgt", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.task:
        print(json.dumps(TASKS[args.task](args)))
    else:
        report(args)


if __name__ == "__main__":
    main()
