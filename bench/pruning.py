"""Pruning (See et al. 2016) of a trained model: test BLEU at each ratio and method, before and after a
few epochs of retraining (fine-tuning with the masks kept), and the size on disk stored sparsely.

    python bench/pruning.py --model checkpoints/de-en-general --ratios 0.4 0.6 0.8 --epochs 2 --amp

Retraining fine-tunes the pruned folder (``python -m nmt train --train-from PRUNED``) on the Multi30k
training data with the bundled recipe's batch size, label smoothing and clipping, Adam at
``--learning-rate``. BLEU: test_2016_flickr, the bundled models' decoding settings (beam 5, length penalty
1, UNK replacement), exact fp32 search. Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.config import DataConfig, ModelConfig, TrainConfig, VocabConfig  # noqa: E402
from nmt.data import read_parallel  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.evaluation import corpus_scores  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402
from nmt.training.prune import prune_checkpoint  # noqa: E402
from nmt.training.trainer import Trainer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
DECODE = {"beam_size": 5, "length_penalty": 1.0, "replace_unk": True}  # (the bundled models' settings)


def test_bleu(folder: Path, data: Path, src: str, tgt: str) -> float:
    sources, references = read_parallel(data / f"test_2016_flickr.{src}.gz", data / f"test_2016_flickr.{tgt}.gz")
    found = Translator.load(folder, device="cpu").translate(sources, int8=False, **DECODE)
    return corpus_scores([t.text for t in found], references).bleu


def retrain(pruned: Path, out: Path, data: Path, src: str, tgt: str, args) -> Path:
    d = DataConfig(train_src=str(data / f"train.{src}.gz"), train_tgt=str(data / f"train.{tgt}.gz"),
                   valid_src=str(data / f"val.{src}.gz"), valid_tgt=str(data / f"val.{tgt}.gz"),
                   src_lang=src, tgt_lang=tgt, batch_size=64, max_len=50)
    t = TrainConfig(save_dir=str(out), epochs=args.epochs, train_from=str(pruned), learning_rate=args.learning_rate,
                    label_smoothing=0.1, max_grad_norm=5.0, amp=args.amp, decay_on_plateau=False)
    return Trainer(d, VocabConfig(), ModelConfig(), t).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="checkpoints/de-en-general")
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    p.add_argument("--methods", nargs="+", default=["blind", "uniform"])
    p.add_argument("--epochs", type=int, default=2, help="retraining epochs")
    p.add_argument("--learning-rate", type=float, default=0.0005)
    p.add_argument("--amp", action="store_true", help="retrain with bf16 autocast")
    args = p.parse_args()
    model, data = Path(args.model), Path(args.data)
    tr = Translator.load(model, device="cpu")
    src, tgt = tr.checkpoint.src_lang, tr.checkpoint.tgt_lang
    print(f"CPU: {cpu_description()}\n{model}: test_2016_flickr BLEU {test_bleu(model, data, src, tgt):.2f} unpruned")
    print("\n| pruned | method | BLEU pruned | BLEU retrained | sparse fp16 MB (dense fp16) | retraining s |")
    print("|---:|---|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            for method in args.methods:
                pruned, record = prune_checkpoint(model, ratio, method, Path(tmp) / f"pruned-{ratio}-{method}")
                before = test_bleu(pruned, data, src, tgt)
                start = time.perf_counter()
                best = retrain(pruned, Path(tmp) / f"run-{ratio}-{method}", data, src, tgt, args)
                seconds = time.perf_counter() - start
                after = test_bleu(best, data, src, tgt)
                print(f"| {ratio:.0%} | {method} | {before:.2f} | {after:.2f} | {record['sparse_bytes'] / 1e6:.2f} "
                      f"({record['dense_fp16_bytes'] / 1e6:.2f}) | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
