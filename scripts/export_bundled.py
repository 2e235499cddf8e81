"""Turn a training run into a bundled checkpoint: tune decoding on val, score on test, write fp16 + card.

    python scripts/export_bundled.py de-en-general [--run runs/de-en-general] [--out checkpoints/de-en-general]

The weights and the length penalty are chosen on the validation set (never on the test set): the
run's best epoch (``best/``) or, when the run kept its last epochs (``--keep-checkpoints``), their
average (``nmt.training.average``). The test score is computed once, with beam 5 and UNK
replacement, and recorded in config.json and the model card, with the validation BLEU of fp32 and
int8 search (``nmt.engines.int8``: int8 becomes the default on a CPU when it keeps that BLEU within
0.3). The run's ``tracked.jsonl`` (the attention forming, epoch by epoch) comes along.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.checkpoint import load_checkpoint, read_metrics, save_checkpoint  # noqa: E402
from nmt.data import read_parallel  # noqa: E402
from nmt.engines.int8 import measure_int8  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.hub import TRACKED_FILE  # noqa: E402
from nmt.serving.model_card import model_card  # noqa: E402
from nmt.serving.tracked import read_tracked  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402
from nmt.training.average import average_checkpoints  # noqa: E402


def hardware(threads: int = 0) -> str:
    """The CPU the run trained on (this one), and with how many threads when it was told (--threads)."""
    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f"{os.cpu_count()} cores of an {name} (no GPU)"
    return f"{threads} thread{'s' if threads > 1 else ''} of {where}" if threads else where


def bleu(translator: Translator, src: list[str], ref: list[str], **decode) -> tuple[float, object]:
    hyps = [r.text for r in translator.translate(src, int8=False, **decode)]  # (the scores are exact fp32's)
    scores = corpus_scores(hyps, ref)
    return scores.bleu, scores


def tune(translator: Translator, src: list[str], ref: list[str], penalties: list[float]) -> dict[float, float]:
    """Validation BLEU at each length penalty (beam 5, UNK replacement where there is attention)."""
    unk = translator.has_attention
    return {lp: bleu(translator, src, ref, beam_size=5, replace_unk=unk, length_penalty=lp)[0] for lp in penalties}


def candidates(run: Path, best):
    """The run's best epoch and, when it kept its last epochs (``epoch-K/``), their average."""
    yield "best epoch", best
    kept = sorted(run.glob("epoch-*"), key=lambda p: int(p.name.removeprefix("epoch-")))
    kept = [p.relative_to(ROOT) if p.is_relative_to(ROOT) else p for p in kept]  # (recorded: no local paths)
    if len(kept) > 1:
        yield f"average of {', '.join(p.name for p in kept)}", average_checkpoints(kept)


def write_card(folder: Path, name: str) -> None:
    """The Hub model card of an exported folder, from its config, training curves and tracked sentences."""
    ckpt = load_checkpoint(folder)
    train = ckpt.extra.get("train") if isinstance(ckpt.extra.get("train"), dict) else {}
    amp = "AMP=1 " if train.get("amp") else ""
    card = model_card(ckpt, ckpt.extra["scores"], f"{amp}scripts/train_bundled.sh {name}",
                      hardware(int(train.get("threads") or 0)), read_metrics(folder), tracked=read_tracked(folder))
    card.save(folder / "README.md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--run", default="")
    p.add_argument("--out", default="")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    p.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.4, 0.7, 1.0])
    p.add_argument("--card-only", action="store_true", help="only rewrite the model card of the exported --out")
    args = p.parse_args()
    run = Path(args.run or ROOT / "runs" / args.name)
    out = Path(args.out or ROOT / "checkpoints" / args.name)
    if args.card_only:
        write_card(out, args.name)
        return
    best = load_checkpoint(run / "best")
    src_l, tgt_l = best.src_lang, best.tgt_lang
    val_src, val_ref = read_parallel(f"{args.data}/val.{src_l}.gz", f"{args.data}/val.{tgt_l}.gz")
    choices = []  # (validation BLEU, length penalty, name, checkpoint, tuned)
    for name, ckpt in candidates(run, best):
        tuned = tune(Translator(ckpt, "cpu"), val_src, val_ref, args.penalties)
        lp = max(tuned, key=tuned.get)
        print(f"{name}: validation BLEU by length penalty", {k: round(v, 2) for k, v in tuned.items()}, "->", lp)
        choices.append((tuned[lp], lp, name, ckpt, tuned))
    _, best_lp, chosen, ckpt, tuned = max(choices, key=lambda c: c[0])
    print("chosen on validation:", chosen)
    translator = Translator(ckpt, "cpu")
    unk = translator.has_attention
    test_src, test_ref = read_parallel(f"{args.data}/test_2016_flickr.{src_l}.gz", f"{args.data}/test_2016_flickr.{tgt_l}.gz")
    _, scores = bleu(translator, test_src, test_ref, beam_size=5, replace_unk=unk, length_penalty=best_lp)
    print(scores)
    decode = {"beam_size": 5, "replace_unk": unk, "length_penalty": best_lp}
    extra = {**ckpt.extra, "decode": decode,
             "scores": {"bleu": round(scores.bleu, 2), "chrf": round(scores.chrf, 2), "test_set": "test_2016_flickr",
                        "bleu_signature": scores.bleu_signature, "chrf_signature": scores.chrf_signature,
                        "valid_bleu_by_length_penalty": {str(k): round(v, 2) for k, v in tuned.items()}}}
    extra["int8"] = measure_int8(translator, val_src, val_ref, **decode)
    print("validation BLEU fp32 / int8:", extra["int8"])
    bundled = dataclasses.replace(ckpt, extra=extra)  # (its vocabularies: words, and characters or features)
    save_checkpoint(bundled, out, dtype=torch.float16, metrics=run / "metrics.jsonl")
    if (run / TRACKED_FILE).is_file():
        shutil.copyfile(run / TRACKED_FILE, out / TRACKED_FILE)
    write_card(out, args.name)
    reloaded = Translator(load_checkpoint(out), "cpu")
    check, _ = bleu(reloaded, test_src[:200], test_ref[:200], **decode)
    ref200, _ = bleu(translator, test_src[:200], test_ref[:200], **decode)
    print(f"fp16 reload check on 200 test sentences: BLEU {check:.2f} (fp32 {ref200:.2f})")
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
