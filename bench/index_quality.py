"""Nearest training examples: how good and how fast the checkpoint's index is (``python -m nmt index``).

    python bench/index_quality.py --model checkpoints/de-en-general \
        --src ../shared/data/multi30k/train.de.gz --tgt ../shared/data/multi30k/train.en.gz \
        --val-src ../shared/data/multi30k/val.de.gz --val-tgt ../shared/data/multi30k/val.en.gz

Prints the index's build time and size on disk, the memory its loading takes, recall@10 against exact
search (brute force over the fp32 states of every training position, computed here) for queries
sampled from the training positions and from the validation sentences (teacher-forced with their
references), on both sides, and the latency of a query on one core (torch and FAISS on one thread):
``find_neighbors`` end to end (with the translation given, and with the model's own) and the raw
quantized-index search alone. ``--candidates`` also measures other numbers of re-ranked candidates
on the same index; ``--alternatives`` builds other index designs into a temporary copy of the
checkpoint and measures them the same way. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nmt.data import read_parallel  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.hub import INDEX_CONFIG, INDEX_FILES  # noqa: E402
from nmt.serving import neighbors  # noqa: E402
from nmt.serving.neighbors import IndexSettings, build_index, find_neighbors, sentence_states  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
# (label, settings) of the designs --alternatives builds: subquantizers per side, OPQ or not
ALTERNATIVES = [
    ("PQ 24+16 B, no OPQ", IndexSettings(target_subquantizers=24, source_subquantizers=16, opq_iterations=0)),
    ("OPQ 16+8 B", IndexSettings(target_subquantizers=16, source_subquantizers=8)),
    ("OPQ 24+16 B", IndexSettings(target_subquantizers=24, source_subquantizers=16)),
    ("OPQ 30+16 B", IndexSettings(target_subquantizers=30, source_subquantizers=16)),
    ("OPQ 32+12 B", IndexSettings(target_subquantizers=32, source_subquantizers=12)),
]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def all_states(tr: Translator, sources: list[str], targets: list[str], batch_size: int = 128):
    """Exact fp32 states of every indexed position, per side, in the index's order (as the index skips pairs)."""
    corpus = neighbors._corpus(tr, sources, targets)
    rows = {side: [None] * len(corpus.sources) for side in neighbors.SIDES}
    for chunk, memory, out in neighbors._batches(corpus, list(range(len(corpus.sources))), batch_size):
        for side in neighbors.SIDES:
            for i, r in zip(chunk, neighbors._rows(corpus, chunk, memory, out, side)):
                rows[side][i] = r
    return corpus, {side: np.ascontiguousarray(np.concatenate(rows[side])) for side in neighbors.SIDES}


def queries(tr, corpus, val_src, val_tgt, n: int, rng) -> dict[str, list[tuple]]:
    """(kind, source, translation, position, side) queries: n training positions and n validation
    positions per side."""
    out = {side: [] for side in neighbors.SIDES}
    for side in neighbors.SIDES:
        for kind, src, tgt in (("train", corpus.sources, corpus.targets), ("val", val_src, val_tgt)):
            for i in rng.choice(len(src), n, replace=len(src) < n):
                tokens = (tr.tgt_tok.tokenize(tgt[i]) if side == "target" else tr.src_tok.tokenize(src[i]))
                if not tokens or not tr.src_tok.tokenize(src[i]):
                    continue
                out[side].append((kind, src[i], tgt[i], int(rng.integers(len(tokens))), side))
    return out


def query_state(tr, source: str, target: str, position: int, side: str) -> np.ndarray:
    ck = tr.checkpoint
    src = [ck.src_vocab.encode(tr.src_tok.tokenize(source))]
    tgt = [ck.tgt_vocab.encode(tr.tgt_tok.tokenize(target))]
    memory, out = sentence_states(tr.model, tr.device, src, tgt)
    return out[0, position] if side == "target" else memory[0, position]


def ground_truth(tr, states, qs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per side: the query states and the exact 10th-nearest squared distance of each (FAISS brute force)."""
    import faiss

    truth = {}
    for side, side_q in qs.items():
        q = np.stack([query_state(tr, *item[1:]) for item in side_q]).astype(np.float32)
        flat = faiss.IndexFlatL2(q.shape[1])
        flat.add(states[side])
        d, _ = flat.search(q, 10)
        truth[side] = (q, d[:, -1])
    return truth


def recall(states: np.ndarray, q: np.ndarray, tenth: float, found_flat) -> float:
    """Share of the exact top 10 found (a position as near as the 10th, a tie, counts)."""
    found = np.array(sorted(set(int(f) for f in found_flat)), dtype=np.int64)
    if not len(found):
        return 0.0
    d = ((states[found] - q) ** 2).sum(1)
    return min(int((d <= tenth * (1 + 1e-5) + 1e-6).sum()), 10) / 10


def evaluate(tr, index, states, qs, truth, candidates: int | None = None) -> dict:
    """Recall@10 (index end to end, raw quantized search), latency (ms) on one thread."""
    res = {"recall": {}, "raw": {}, "ms": {}, "raw_ms": {}}
    for side, side_q in qs.items():
        index._joined.cache_clear()  # (each row starts cold: its queries are the other rows')
        s = index.sides[side]
        if candidates is not None:
            s.candidates = candidates
        rec, raw, ms, raw_ms = {"train": [], "val": []}, {"train": [], "val": []}, [], []
        for j, (kind, source, target, position, _) in enumerate(side_q):
            q, tenth = truth[side][0][j], truth[side][1][j]
            t0 = time.perf_counter()
            found = find_neighbors(tr, source, target, position, side, 10)
            ms.append((time.perf_counter() - t0) * 1000)
            rec[kind].append(recall(states[side], q, tenth, [s.offsets[n.sentence] + n.position for n in found]))
            t0 = time.perf_counter()
            cands = s.search(q, s.candidates)
            raw_ms.append((time.perf_counter() - t0) * 1000)
            raw[kind].append(recall(states[side], q, tenth, [s.offsets[a] + b for a, b in cands[:10]]))
        res["recall"][side] = {k: float(np.mean(v)) for k, v in rec.items()}
        res["raw"][side] = {k: float(np.mean(v)) for k, v in raw.items()}
        res["ms"][side] = (statistics.median(ms), float(np.percentile(ms, 90)))
        res["raw_ms"][side] = (statistics.median(raw_ms), float(np.percentile(raw_ms, 90)))
    return res


def own_translation_ms(tr, qs, n: int = 50) -> tuple[float, float]:
    times = []
    for _, source, _, _, _ in qs["target"][:n]:
        t0 = time.perf_counter()
        find_neighbors(tr, source, None, 0, "target", 10)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def disk_mb(folder: Path) -> float:
    return sum((folder / n).stat().st_size for n in INDEX_FILES if (folder / n).exists()) / 1e6


def report(label: str, folder: Path, tr, states, qs, truth, candidates: list[int]) -> None:
    import json

    config = json.loads((folder / INDEX_CONFIG).read_text())
    before = rss_mb()
    t0 = time.perf_counter()
    index = neighbors.cached_index(tr)
    load_s, load_mb = time.perf_counter() - t0, rss_mb() - before
    print(f"\n## {label}: {folder}")
    print(f"build {config['build_seconds']:.0f} s; on disk {disk_mb(folder):.2f} MB (exact fp32 states: "
          f"{neighbors.exact_states_mib(config) * 1.048576:.0f} MB); load {load_s:.2f} s, +{load_mb:.0f} MB RSS")
    for side in neighbors.SIDES:
        c = config[side]
        print(f"  {side}: {c['positions']:,} states of {c['dim']}, OPQ to {c['rotated_dim']} then "
              f"{c['subquantizers']} x {c['bits']} bits, {c['candidates']} candidates re-ranked")
    print("| side | candidates | recall@10 train | recall@10 val | raw index recall@10 train / val "
          "| find_neighbors ms median / p90 | raw search ms median / p90 |")
    print("|---|---|---|---|---|---|---|")
    defaults = {side: index.sides[side].candidates for side in neighbors.SIDES}
    for side, side_q in qs.items():  # warm-up (the first queries of a process are slower), untimed
        for _, source, target, position, _ in side_q[:50]:
            find_neighbors(tr, source, target, position, side, 10)
    for cand in [None, *candidates]:
        r = evaluate(tr, index, states, qs, truth, cand)
        for side in neighbors.SIDES:
            rec, raw, ms, raw_ms = r["recall"][side], r["raw"][side], r["ms"][side], r["raw_ms"][side]
            print(f"| {side} | {cand or defaults[side]} | {rec['train']:.3f} | {rec['val']:.3f} | "
                  f"{raw['train']:.3f} / {raw['val']:.3f} | {ms[0]:.1f} / {ms[1]:.1f} | "
                  f"{raw_ms[0]:.2f} / {raw_ms[1]:.2f} |", flush=True)
    for side, cand in defaults.items():
        index.sides[side].candidates = cand
    own = own_translation_ms(tr, qs)
    print(f"find_neighbors with the model's own translation (beam search included), target side: "
          f"{own[0]:.1f} / {own[1]:.1f} ms median / p90")


def alternatives(args, sources, targets, states, qs, truth) -> None:
    for label, settings in ALTERNATIVES:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            shutil.copytree(args.model, folder, ignore=shutil.ignore_patterns(*INDEX_FILES))
            other = Translator.load(folder, device="cpu")
            torch.set_num_threads(args.build_threads)
            build_index(other, sources, targets, folder, dataclasses.replace(settings, batch_size=64))
            torch.set_num_threads(1)
            report(label, folder, other, states, qs, truth, [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="checkpoints/de-en-general")
    p.add_argument("--src", default=str(SHARED / "train.de.gz"))
    p.add_argument("--tgt", default=str(SHARED / "train.en.gz"))
    p.add_argument("--val-src", default=str(SHARED / "val.de.gz"))
    p.add_argument("--val-tgt", default=str(SHARED / "val.en.gz"))
    p.add_argument("--queries", type=int, default=200, help="queries per side from each of train and val")
    p.add_argument("--candidates", type=int, nargs="*", default=[], help="also measure these candidate counts")
    p.add_argument("--alternatives", action="store_true", help="also build and measure other index designs")
    p.add_argument("--build-threads", type=int, default=2)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    import faiss

    tr = Translator.load(args.model, device="cpu")
    sources, targets = read_parallel(args.src, args.tgt)
    val_src, val_tgt = read_parallel(args.val_src, args.val_tgt)
    t0 = time.perf_counter()
    corpus, states = all_states(tr, sources, targets)
    print(f"exact states of {len(corpus.sources):,} pairs: {time.perf_counter() - t0:.0f} s "
          f"({sum(s.nbytes for s in states.values()) / 1e6:.0f} MB as fp32)")
    qs = queries(tr, corpus, val_src, val_tgt, args.queries, np.random.default_rng(0))
    truth = ground_truth(tr, states, qs)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    report("the checkpoint's index", Path(args.model), tr, states, qs, truth, args.candidates)
    if args.alternatives:
        alternatives(args, sources, targets, states, qs, truth)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
