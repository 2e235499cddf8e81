"""How well a model's attention agrees with a word aligner: the alignment error rate (Och & Ney 2003)
of the attention's argmax links, teacher-forced on the references, against eflomal's links
(``scripts/align_multi30k.sh``), and the model's test BLEU. Word t's links are read from the attention
of the step that predicts it (as guided alignment trains it), and also from the step after, which
reads word t: an unguided input-feeding model may attend to what it has just written.

    python bench/alignment_quality.py --model checkpoints/de-en-general checkpoints/de-en-dot ...

AER over the validation pairs (the aligner's links as sure links; every target word gets one
attention link, so a perfect attention still scores above 0 where the aligner leaves words
unlinked). BLEU: test_2016_flickr, beam 5, length penalty 1, UNK replacement (the bundled models' settings), exact fp32.
Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.alignment import alignment_error_rate, attention_links, read_alignments  # noqa: E402
from nmt.data import read_parallel, tokenize_all  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/multi30k"


def aer(tr: Translator, data: Path, alignments: Path, split: str = "val") -> tuple[float, float]:
    src_lang, tgt_lang = tr.checkpoint.src_lang, tr.checkpoint.tgt_lang
    sources, references = read_parallel(data / f"{split}.{src_lang}.gz", data / f"{split}.{tgt_lang}.gz")
    src_tok, tgt_tok = tokenize_all(sources, src_lang), tokenize_all(references, tgt_lang)
    sure = read_alignments(alignments / f"{split}.{src_lang}-{tgt_lang}.align", [len(s) for s in src_tok],
                           [len(t) for t in tgt_tok])
    keep = [i for i in range(len(sources)) if src_tok[i] and tgt_tok[i]]
    scored = tr.score([sources[i] for i in keep], [tgt_tok[i] for i in keep], alternatives=0)
    found = [attention_links(s.attention, len(s.src_tokens), len(s.tokens)) for s in scored]
    # The step after: the attention of the step that reads word t (and predicts word t + 1).
    after = [attention_links(s.attention[1:], len(s.src_tokens), len(s.tokens)) for s in scored]
    sure = [sure[i] for i in keep]
    return alignment_error_rate(found, sure), alignment_error_rate(after, sure)


def test_bleu(tr: Translator, data: Path) -> float:
    src_lang, tgt_lang = tr.checkpoint.src_lang, tr.checkpoint.tgt_lang
    sources, references = read_parallel(data / f"test_2016_flickr.{src_lang}.gz", data / f"test_2016_flickr.{tgt_lang}.gz")
    found = tr.translate(sources, int8=False, beam_size=5, length_penalty=1.0, replace_unk=True)
    return corpus_scores([t.text for t in found], references).bleu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["checkpoints/de-en-general"])
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--alignments", default=str(ROOT / "alignments"))
    args = p.parse_args()
    print(f"CPU: {cpu_description()}\n\n| model | val AER | val AER, the step after | test BLEU |\n|---|---:|---:|---:|",
          flush=True)
    for model in args.model:
        tr = Translator.load(model, device="cpu")
        own, after = aer(tr, Path(args.data), Path(args.alignments))
        print(f"| {model} | {own:.3f} | {after:.3f} | {test_bleu(tr, Path(args.data)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
