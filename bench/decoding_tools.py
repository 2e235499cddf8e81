"""What the decoding tools buy on Multi30k: ensembles, the n-best oracle, simple stopping.

    python bench/decoding_tools.py [--set test_2016_flickr] [--models general dot concat none]

Prints, for the bundled German->English models (each with its checkpoint's decoding defaults:
beam 5, length penalty 1, UNK replacement):
* BLEU / chrF of each model alone and of ensembles of them (``Translator.load([...])``), with the
  time each took for the whole set (batched, int8 off: exact fp32);
* the oracle of the flagship's 5- and 10-best lists by sentence BLEU-4 and GLEU-4 (``nmt.rescoring``);
* exact against simple stopping (seq2seq-attn ``-simple 1``): BLEU, how many translations differ, time.
The CPU's model and vector flags are printed first. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmt.data import read_parallel  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.rescoring import oracle  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "multi30k"
def timed(translator: Translator, sources: list[str], **settings):
    start = time.perf_counter()
    found = translator.translate(sources, int8=False, **settings)  # (exact fp32, as the scores in the model cards)
    return found, time.perf_counter() - start


def ensembles(names: list[str], sources, refs) -> None:
    print("| models | BLEU | chrF | seconds |\n|---|---|---|---|")
    groups = [[n] for n in names] + [names[:k] for k in range(2, len(names) + 1)]
    for group in groups:
        translator = Translator.load([ROOT / "checkpoints" / f"de-en-{n}" for n in group], device="cpu")
        found, seconds = timed(translator, sources)
        s = corpus_scores([t.text for t in found], refs)
        print(f"| {' + '.join(group)} | {s.bleu:.2f} | {s.chrf:.2f} | {seconds:.1f} |")


def oracles(translator: Translator, sources, refs) -> None:
    print("\n| n-best | top BLEU | oracle by | oracle BLEU | oracle chrF | sentences changed |\n|---|---|---|---|---|---|")
    for n in (5, 10):
        found, _ = timed(translator, sources, beam_size=n, n_best=n)
        lists = [[c.text for c in t.n_best] for t in found]
        top = corpus_scores([t.text for t in found], refs).bleu
        for metric in ("bleu", "gleu"):
            picks = oracle(lists, refs, metric, 4)
            s = corpus_scores([lst[p] if lst else "" for lst, p in zip(lists, picks)], refs)
            print(f"| {n} | {top:.2f} | {metric.upper()}-4 | {s.bleu:.2f} | {s.chrf:.2f} | {sum(p > 0 for p in picks)} |")


def simple_stopping(translator: Translator, sources, refs) -> None:
    print("\n| stopping | BLEU | seconds | translations that differ |\n|---|---|---|---|")
    exact, t_exact = timed(translator, sources)
    simple, t_simple = timed(translator, sources, simple=True)
    differ = sum(a.text != b.text for a, b in zip(exact, simple))
    for name, found, seconds in (("exact", exact, t_exact), ("simple", simple, t_simple)):
        bleu = corpus_scores([t.text for t in found], refs).bleu
        print(f"| {name} | {bleu:.2f} | {seconds:.1f} | {differ if name == 'simple' else ''} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="test_2016_flickr")
    p.add_argument("--models", nargs="+", default=["general", "concat", "dot", "none"])
    args = p.parse_args()
    print(f"CPU: {cpu_description()}; set: {args.set}\n")
    sources, refs = read_parallel(DATA / f"{args.set}.de.gz", DATA / f"{args.set}.en.gz")
    ensembles(args.models, sources, refs)
    flagship = Translator.load(ROOT / "checkpoints" / f"de-en-{args.models[0]}", device="cpu")
    oracles(flagship, sources, refs)
    simple_stopping(flagship, sources, refs)


if __name__ == "__main__":
    main()
