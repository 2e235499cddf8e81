"""This tree against another one, in one process, the two alternating round by round on the same inputs.

    python bench/side_by_side.py --old /path/to/old/checkout [--rounds 8] [--int8]

On a shared, noisy machine, figures of separate processes minutes apart can differ by more than
a change does; alternating in one process compares like with like. The old tree's ``nmt/`` is
copied to a temporary folder as the package ``nmt_old`` (its absolute imports rewritten), and both
are driven through public entry points only:
``Translator.translate`` (one sentence at a time, and batches of 30) and ``Trainer.train_step``
(the reference model on Multi30k batches). Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.device import cpu_description  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "multi30k"


def import_old(tree: Path):
    """The old tree's Translator and Trainer, its ``nmt`` imported as ``nmt_old`` (absolute imports
    of ``nmt`` are rewritten; the layout before and after nmt/serving and nmt/training are both found)."""
    folder = Path(tempfile.mkdtemp(prefix="nmt-old-"))
    shutil.copytree(tree / "nmt", folder / "nmt_old")
    for path in (folder / "nmt_old").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\b(from|import) nmt(\.|\b)", r"\1 nmt_old\2", text))
    sys.path.insert(0, str(folder))
    translator = "nmt_old.serving.translator" if (folder / "nmt_old/serving").is_dir() else "nmt_old.translator"
    return importlib.import_module(translator).Translator, importlib.import_module("nmt_old.training").Trainer


def alternate(rounds: int, runs: dict) -> dict[str, list[float]]:
    """Each run of ``runs`` (name -> function returning a figure), in alternating order, ``rounds`` times."""
    figures = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            figures[name].append(runs[name]())
    return figures


def translation(translators: dict, sentences: list[str], rounds: int, int8: bool) -> None:
    for t in translators.values():
        t.translate(sentences[:20], beam_size=5, int8=int8)

    def one(t):
        start = time.perf_counter()
        for s in sentences[:150]:
            t.translate([s], beam_size=5, int8=int8)
        return (time.perf_counter() - start) / 150 * 1000

    def batched(t):
        start = time.perf_counter()
        t.translate(sentences[:600], beam_size=5, batch_size=30, int8=int8)
        return 600 / (time.perf_counter() - start)

    for label, measure in (("one sentence, beam 5, mean ms", one), ("batches of 30, beam 5, sentences/s", batched)):
        figures = alternate(rounds, {name: (lambda t=t: measure(t)) for name, t in translators.items()})
        print(label, {name: round(statistics.median(v), 2) for name, v in figures.items()})


def training(trainers: dict, rounds: int) -> None:
    batches = {}
    for name, t in trainers.items():  # (set up in the order built)
        t._setup()
        batches[name] = list(t.train_data.batches(64, shuffle=True, seed=1))[:25]
        for b in batches[name][:5]:
            t.train_step(b)

    def steps(name):
        start = time.perf_counter()
        for b in batches[name]:
            trainers[name].train_step(b)
        return (time.perf_counter() - start) / len(batches[name]) * 1000

    figures = alternate(rounds, {name: (lambda n=name: steps(n)) for name in trainers})
    print("training step, ms/batch", {name: round(statistics.median(v), 1) for name, v in figures.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, type=Path, help="a checkout of the tree to compare with")
    p.add_argument("--model", default=str(ROOT / "checkpoints/de-en-general"))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--amp", action="store_true", help="training under bf16 autocast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-first", action="store_true",
                   help="build the new tree's objects first (the first one built tends to run faster: run both ways)")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    torch.set_num_threads(args.threads)
    OldTranslator, OldTrainer = import_old(args.old)
    from nmt import DataConfig, ModelConfig, TrainConfig, Translator, VocabConfig
    from nmt.training import Trainer

    with gzip.open(DATA / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as fh:
        sentences = [line.strip() for line in fh]
    makers = {"old": lambda: OldTranslator.load(args.model, device="cpu"),
              "new": lambda: Translator.load(args.model, device="cpu")}
    translation(build(makers, args.new_first), sentences, args.rounds, args.int8)
    data = dict(train_src=str(DATA / "train.de.gz"), train_tgt=str(DATA / "train.en.gz"),
                valid_src=str(DATA / "val.de.gz"), valid_tgt=str(DATA / "val.en.gz"))
    train = dict(amp=args.amp, device="cpu", save_dir=tempfile.mkdtemp(prefix="nmt-bench-"))
    old_cfg = sys.modules["nmt_old.config"]
    makers = {"old": lambda: OldTrainer(old_cfg.DataConfig(**data), old_cfg.VocabConfig(min_freq=2),
                                        old_cfg.ModelConfig(), old_cfg.TrainConfig(**train)),
              "new": lambda: Trainer(DataConfig(**data), VocabConfig(min_freq=2), ModelConfig(), TrainConfig(**train))}
    training(build(makers, args.new_first), args.rounds)


def build(makers: dict, new_first: bool) -> dict:
    """The objects of both trees, built in the order asked for (and set up: see ``training``)."""
    order = ["new", "old"] if new_first else ["old", "new"]
    return {name: makers[name]() for name in order}


if __name__ == "__main__":
    main()
