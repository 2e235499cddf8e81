"""Training throughput: source+target tokens/s and peak memory for a model configuration.

    python bench/train_speed.py --data ../shared/data/multi30k --batches 40 [model flags...]
    python bench/train_speed.py --synthetic --seq-len 50 --vocab 50000 --layers 2 --hidden 500 --emb-size 500 --no-brnn

Takes real Multi30k batches (or, with --synthetic, random batches of sentences of exactly
--seq-len tokens over a --vocab word vocabulary: the seq2seq-attn README's benchmark setting),
runs a few warm-up steps, then times ``--batches`` training steps. Prints figures; asserts nothing.

With --seen-shapes (the default) the warm-up also runs once through the timed batches: in a
real run every batch shape recurs each epoch, and oneDNN's bf16 kernels are built once per shape
(tens of ms each), so timing shapes seen for the first time would measure kernel building.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nmt.cli import add_config_args, config_from_args  # noqa: E402
from nmt.config import DataConfig, ModelConfig, TrainConfig, VocabConfig  # noqa: E402
from nmt.data import Batch  # noqa: E402
from nmt.device import cpu_description  # noqa: E402
from nmt.model.seq2seq import Seq2Seq  # noqa: E402
from nmt.training import Trainer  # noqa: E402
from nmt.training.optim import make_optimizer  # noqa: E402
from nmt.vocabulary import BOS_ID  # noqa: E402


def synthetic_batches(n: int, batch_size: int, seq_len: int, vocab: int, seed: int = 1) -> list[Batch]:
    """Random full-length sentences: (batch, seq_len) sources and targets, no padding."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(4, vocab, (batch_size, seq_len), generator=gen)
        tgt = torch.randint(4, vocab, (batch_size, seq_len), generator=gen)
        tgt_in = torch.cat([torch.full((batch_size, 1), BOS_ID), tgt[:, :-1]], 1)
        out.append(Batch(src, torch.full((batch_size,), seq_len), tgt_in, tgt, list(range(batch_size))))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/multi30k"))
    p.add_argument("--src-lang", default="de")
    p.add_argument("--tgt-lang", default="en")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seen-shapes", action=argparse.BooleanOptionalAction, default=True,
                   help="also warm up on the timed batches (their shapes are then seen, as after a first epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print the N operators with the most self CPU time over the timed steps "
                        "(torch.profiler; it slows the steps, so the tokens/s then read low)")
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--synthetic", action="store_true", help="random full-length batches instead of Multi30k")
    p.add_argument("--seq-len", type=int, default=50, help="with --synthetic: tokens per sentence")
    p.add_argument("--vocab", type=int, default=50000, help="with --synthetic: vocabulary size (source and target)")
    add_config_args(p, ModelConfig, "model")
    for name in ("optim", "learning_rate", "label_smoothing", "amp", "threads", "device"):
        f = TrainConfig.__dataclass_fields__[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(f.default, bool) or f.metadata.get("flag"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    d = Path(args.data)
    data = DataConfig(train_src=str(d / f"train.{args.src_lang}.gz"), train_tgt=str(d / f"train.{args.tgt_lang}.gz"),
                      valid_src=str(d / f"val.{args.src_lang}.gz"), valid_tgt=str(d / f"val.{args.tgt_lang}.gz"),
                      src_lang=args.src_lang, tgt_lang=args.tgt_lang, batch_size=args.batch_size)
    train = TrainConfig(optim=args.optim, learning_rate=args.learning_rate, label_smoothing=args.label_smoothing,
                        amp=args.amp, threads=args.threads, device=args.device, save_dir="/tmp/nmt-bench")
    model_cfg = config_from_args(ModelConfig, args)
    trainer = Trainer(data, VocabConfig(min_freq=args.min_freq), model_cfg, train)
    n = args.warmup + args.batches
    if args.synthetic:
        model_cfg.src_vocab = model_cfg.tgt_vocab = args.vocab
        trainer.model = Seq2Seq(model_cfg).to(trainer.device)
        trainer.optimizer = make_optimizer(train.optim, trainer.model.parameters(), train.learning_rate)
        batches = synthetic_batches(n, args.batch_size, args.seq_len, args.vocab)
    else:
        trainer._setup()
        batches = list(trainer.train_data.batches(args.batch_size, shuffle=True, seed=1))[:n]
    for b in batches[: args.warmup] + (batches[args.warmup :] if args.seen_shapes else []):
        trainer.train_step(b.to(trainer.device))
    src = tgt = 0
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None
    start = time.perf_counter()
    with profiler or contextlib.nullcontext():
        for b in batches[args.warmup :]:
            trainer.train_step(b.to(trainer.device))
            src += int(b.src_lengths.sum())
            tgt += b.n_tgt_tokens
        sync()
    elapsed = time.perf_counter() - start
    print(f"model: {trainer.model.num_parameters() / 1e6:.2f} M parameters, device {trainer.device}, "
          f"threads {torch.get_num_threads()}, amp {trainer.amp}")
    print(f"training: {src / elapsed:.0f} source + {tgt / elapsed:.0f} target = {(src + tgt) / elapsed:.0f} tokens/s "
          f"({elapsed / args.batches * 1000:.1f} ms/batch of {args.batch_size})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if profiler:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    if trainer.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
