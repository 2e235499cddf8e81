"""Translation speed: batched sentences/s, one-sentence latency (p50/p90) and peak memory.

    python bench/translate_speed.py --model checkpoints/de-en-general \
        --src ../shared/data/multi30k/test_2016_flickr.de.gz --beam-sizes 1 5 --batch-sizes 30

Loads the model once, warms up, then for every beam size x batch size translates the whole
file (sentences/s) and, for each beam size, --latency-sents sentences one at a time.
With --ref it also prints BLEU. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nmt.config import EngineConfig  # noqa: E402
from nmt.data import read_lines  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="checkpoints/de-en-general")
    p.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared/data/multi30k/test_2016_flickr.de.gz"))
    p.add_argument("--ref", default="")
    p.add_argument("--beam-sizes", type=int, nargs="+", default=[1, 5])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[30])
    p.add_argument("--latency-sents", type=int, default=200, help="sentences timed one at a time (0: skip)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="decode with int8 matrix layers (CPU); unset: the engine's default (nmt.engines.int8)")
    p.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                   help="decoder step as a TorchScript trace (CPU)")
    p.add_argument("--inter-threads", type=int, default=0, help="batches searched at once (CPU; 0: the default)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay each search step as a CUDA graph (GPU)")
    p.add_argument("--passes", type=int, default=1,
                   help="times each beam x batch setting is timed (with CUDA graphs, the first pass also captures)")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(args.model, device=args.device)
    sources = read_lines(args.src)
    refs = read_lines(args.ref) if args.ref else None
    options = dict(int8=args.int8, trace=args.trace, cuda_graphs=args.cuda_graphs)
    translator.translate(sources[:60], beam_size=5, **options)  # warm-up
    engine = translator.engines.resolve(EngineConfig(args.int8, args.inter_threads, args.trace, args.cuda_graphs))
    print(f"model {args.model} on {translator.device}, {torch.get_num_threads()} threads, "
          f"{'int8' if engine.int8 else 'fp32'}, trace {args.trace}, inter_threads {engine.inter_threads}, "
          f"CUDA graphs {args.cuda_graphs and translator.device.type == 'cuda'}, {len(sources)} sentences")
    for beam in args.beam_sizes:
        for batch, run in itertools.product(args.batch_sizes, range(args.passes)):
            start = time.perf_counter()
            results = translator.translate(sources, beam_size=beam, batch_size=batch,
                                           inter_threads=args.inter_threads, **options)
            elapsed = time.perf_counter() - start
            bleu = f", BLEU {corpus_scores([r.text for r in results], refs).bleu:.2f}" if refs else ""
            graphed = translator.engines.graphs
            graphs = f", {graphed.captures} graphs captured so far" if graphed else ""
            print(f"beam {beam:2d} batch {batch:3d}{f' pass {run + 1}' if args.passes > 1 else ''}: "
                  f"{elapsed:6.2f} s, {len(sources) / elapsed:7.1f} sentences/s{bleu}{graphs}")
        if args.latency_sents < 2:
            continue
        times = []
        for s in sources[: args.latency_sents]:
            start = time.perf_counter()
            translator.translate([s], beam_size=beam, **options)
            times.append((time.perf_counter() - start) * 1000)
        q = statistics.quantiles(times, n=10)
        print(f"beam {beam:2d} one sentence: median {statistics.median(times):.1f} ms, p90 {q[8]:.1f} ms")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if translator.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**20:.0f} MB reserved")


if __name__ == "__main__":
    main()
