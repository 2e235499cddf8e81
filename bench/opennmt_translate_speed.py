"""The OpenNMT-py 3.5.1 side of the translation comparison in BENCHMARKS.md.

Needs OpenNMT-py installed next to the project (it is not a dependency; BENCHMARKS.md says how)
and a model trained by ``onmt_train``. Mirrors ``bench/translate_speed.py``: loads the model once,
warms up on 60 sentences, then times the whole (pre-tokenized) file at each beam size in batches
of --batch-size sentences, and --latency-sents sentences one at a time at the first beam size.

    /tmp/onmt/bin/python bench/opennmt_translate_speed.py --model run/model_step_1000.pt \
        --src test_2016_flickr.tok.de --beam-sizes 5 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # OpenNMT-py 3.5 checkpoints are pickles

from onmt.inference_engine import InferenceEnginePY  # noqa: E402
from onmt.opts import translate_opts  # noqa: E402
from onmt.utils.parse import ArgumentParser  # noqa: E402


def engine(model: str, src: str, beam: int, batch: int) -> InferenceEnginePY:
    parser = ArgumentParser()
    translate_opts(parser)
    opt = parser.parse_args(["-model", model, "-src", src, "-beam_size", str(beam), "-batch_size", str(batch),
                             "-batch_type", "sents", "-output", os.devnull])
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    return InferenceEnginePY(opt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--src", required=True, help="tokenized source, one sentence per line")
    p.add_argument("--beam-sizes", type=int, nargs="+", default=[5, 1])
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--latency-sents", type=int, default=200)
    p.add_argument("--output", default="", help="write the first beam size's translations here")
    args = p.parse_args()
    with open(args.src, encoding="utf-8") as f:
        sources = [line.strip() for line in f]
    for n, beam in enumerate(args.beam_sizes):
        translator = engine(args.model, args.src, beam, args.batch_size)
        translator.infer_list(sources[:60])  # warm-up
        start = time.perf_counter()
        _, preds = translator.infer_list(sources)
        elapsed = time.perf_counter() - start
        tokens = sum(len(p[0].split()) for p in preds) / len(preds)
        print(f"beam {beam:2d} batch {args.batch_size:3d}: {elapsed:6.2f} s, {len(sources) / elapsed:7.1f} sentences/s, "
              f"{tokens:.1f} tokens per output", flush=True)
        if n == 0 and args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write("".join(p[0] + "\n" for p in preds))
        if n == 0 and args.latency_sents >= 2:
            times = []
            for s in sources[: args.latency_sents]:
                start = time.perf_counter()
                translator.infer_list([s])
                times.append((time.perf_counter() - start) * 1000)
            print(f"beam {beam:2d} one sentence: median {statistics.median(times):.1f} ms, "
                  f"p90 {statistics.quantiles(times, n=10)[8]:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
