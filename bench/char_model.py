"""The character-CNN encoder model against the word model it was trained next to.

    python bench/char_model.py [--word checkpoints/de-en-general] [--chars checkpoints/de-en-general-chars]

Prints, on test_2016_flickr: BLEU and chrF (each checkpoint's decoding defaults), how many source
tokens (and distinct words) each model's encoder cannot tell from <unk>, and the one-sentence
latency at beam 5 of both, fp32 and the default engine, the calls alternating sentence by sentence
(medians). Training throughput: ``bench/train_speed.py`` with and without ``--use-chars-enc``
(BENCHMARKS.md gives both commands). Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.data import read_parallel  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "multi30k"


def unknown(translator: Translator, sources: list[str]) -> tuple[int, int, int]:
    """Source tokens the encoder reads as <unk>, distinct such words, and all tokens."""
    inputs = translator.checkpoint.inputs
    tokens = [translator.src_tok.tokenize(s) for s in sources]
    unk = [w for t in tokens for w in inputs.unknown(t)]
    return len(unk), len(set(unk)), sum(len(t) for t in tokens)


def latency(models: dict[str, Translator], sources: list[str], int8: bool | None) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    for i, source in enumerate(sources):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            models[name].translate([source], beam_size=5, int8=int8)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--word", default=str(ROOT / "checkpoints/de-en-general"))
    p.add_argument("--chars", default=str(ROOT / "checkpoints/de-en-general-chars"))
    p.add_argument("--latency-sents", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; {args.threads} thread(s)\n")
    models = {"word": Translator.load(args.word, device="cpu"), "chars": Translator.load(args.chars, device="cpu")}
    sources, refs = read_parallel(DATA / "test_2016_flickr.de.gz", DATA / "test_2016_flickr.en.gz")
    print("| model | parameters | BLEU | chrF | unknown source tokens | distinct unknown words |\n|---|---|---|---|---|---|")
    for name, t in models.items():
        s = corpus_scores([r.text for r in t.translate(sources)], refs)
        unk, distinct, total = unknown(t, sources)
        print(f"| {name} | {t.model.num_parameters() / 1e6:.2f} M | {s.bleu:.2f} | {s.chrf:.2f} | "
              f"{unk} of {total:,} | {distinct} |")
    print("\n| one sentence, beam 5, median ms | word | chars |\n|---|---|---|")
    for label, int8 in (("fp32", False), ("default engine", None)):
        for t in models.values():
            t.translate(sources[:10], beam_size=5, int8=int8)  # (warm-up: traces, int8 copies)
        found = latency(models, sources[: args.latency_sents], int8)
        print(f"| {label} | {found['word']:.1f} | {found['chars']:.1f} |")


if __name__ == "__main__":
    main()
