"""Command line: ``python -m nmt {train,translate,evaluate,score,extract,index,push,prune,average,align,preprocess}``.

Flags map one to one onto the config dataclasses (``emb_size`` -> ``--emb-size``;
booleans get ``--flag/--no-flag``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from nmt.config import DataConfig, DecodeConfig, EngineConfig, ModelConfig, TrainConfig, VocabConfig
from nmt.errors import NMTError

log = logging.getLogger("nmt")


def add_config_args(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.metadata.get("help") is None or f.name in ("src_vocab", "tgt_vocab"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": f.default, "help": f"{f.metadata['help']} (default: %(default)s)", "dest": f.name}
        if isinstance(f.default, bool) or f.metadata.get("flag"):  # (a flag may also be left unset: None)
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=type(f.default), choices=f.metadata.get("choices"), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description="Attentional LSTM neural machine translation.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for cls, title in ((DataConfig, "data"), (VocabConfig, "vocabulary"), (ModelConfig, "model"), (TrainConfig, "training")):
        add_config_args(train, cls, title)

    for name, helptext in (("translate", "translate a file"), ("evaluate", "score a model on a test set")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, nargs="+",
                       help="checkpoint folder or Hub repo id (user/name[@revision]); several: an ensemble "
                            "(their next-word probabilities averaged at every step; the same vocabularies)")
        p.add_argument("--src", required=True, help="source file (plain or .gz; '-' for standard input)")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto")
        add_config_args(p, DecodeConfig, "decoding")
        add_config_args(p, EngineConfig, "engine (how search runs; the same translations)")
        if name == "translate":
            p.add_argument("--output", default="-", help="output file ('-': standard output)")
            p.add_argument("--attention-out", default="", help="write tokens and attention per sentence (JSON lines)")
            p.add_argument("--score-gold", default="", help="also report the log-likelihood of these references")
            p.add_argument("--n-best-numbering", default="sentence", choices=("sentence", "rank"),
                           help="with --n-best > 1, number lines 'i ||| translation ||| score' by the sentence (from 0, "
                                "Moses) or by the rank in its list (from 1, seq2seq-attn) (default: %(default)s)")
        else:
            p.add_argument("--ref", required=True, help="reference translations (raw text)")
            p.add_argument("--output", default="", help="also write the translations here")
            p.add_argument("--rescore", default="", choices=("", "bleu", "gleu"),
                           help="also score the n-best lists' oracle: per sentence the hypothesis with the best "
                                "sentence BLEU or GLEU against the reference (needs --n-best > 1)")
            p.add_argument("--rescore-param", type=int, default=4, help="the n-gram order of --rescore (default: %(default)s)")

    score = sub.add_parser("score", help="score translations against references (sacreBLEU, chrF, TER; no model)")
    score.add_argument("--hyp", required=True, help="translations, one per line (plain or .gz; '-': standard input)")
    score.add_argument("--ref", required=True, action="append",
                       help="reference translations (give --ref again for more references of the same sentences)")

    extract = sub.add_parser("extract", help="write a model's states and attention over given translations")
    add_pair_args(extract, "checkpoint folder or Hub repo id", "source file (plain or .gz)",
                  "target file: the translations the decoder reads (plain or .gz)")
    extract.add_argument("--out", required=True, help="folder for states.safetensors, tokens.jsonl and extraction.json")

    index = sub.add_parser("index", help="index the hidden states of the training data (nearest training examples)")
    add_pair_args(index, "checkpoint folder (the index files are written into it)", "training source file (plain or .gz)",
                  "training target file (plain or .gz)")

    push = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    push.add_argument("--model", required=True, help="checkpoint folder")
    push.add_argument("--repo-id", required=True, help="user/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to push to")
    add_checkpoint_tools(sub)
    add_preprocess(sub)
    add_align(sub)
    return parser


def add_pair_args(parser: argparse.ArgumentParser, model: str, src: str, tgt: str) -> None:
    """A model run teacher-forced over a parallel file pair (``extract``, ``index``)."""
    parser.add_argument("--model", required=True, help=model)
    parser.add_argument("--src", required=True, help=src)
    parser.add_argument("--tgt", required=True, help=tgt)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")


def add_align(sub) -> None:
    """``align``: word alignments for guided alignment training (``nmt.alignment``)."""
    align = sub.add_parser("align", help="word-align a parallel corpus with eflomal (for guided alignment training)")
    align.add_argument("--src", required=True, help="source file (raw text, plain or .gz)")
    align.add_argument("--tgt", required=True, help="target file (raw text, plain or .gz)")
    align.add_argument("--src-lang", required=True, help="source language (Moses tokenizer)")
    align.add_argument("--tgt-lang", required=True, help="target language (Moses tokenizer)")
    align.add_argument("--out", required=True, help="output: one line of source-target links 'i-j' per pair (Pharaoh)")
    align.add_argument("--extra-src", action="append", default=[],
                       help="more source text aligned in the same run (eflomal is unsupervised: more text, better "
                            "links), its links not written; repeatable, each with an --extra-tgt")
    align.add_argument("--extra-tgt", action="append", default=[], help="the translations of an --extra-src file")


def add_checkpoint_tools(sub) -> None:
    """The commands that make a checkpoint from others: ``prune`` and ``average``."""
    prune = sub.add_parser("prune", help="magnitude-prune a checkpoint (See et al. 2016)")
    prune.add_argument("--model", required=True, help="checkpoint folder")
    prune.add_argument("--ratio", required=True, type=float, help="the fraction of the weights set to 0, in [0, 1)")
    prune.add_argument("--method", default="blind",
                       help="blind (the smallest weights of the whole model) or uniform (the same ratio in every "
                            "weight class) (default: %(default)s)")
    prune.add_argument("--out", default="", help="output checkpoint folder (default: MODEL-pruned-RATIO-METHOD)")

    average = sub.add_parser("average", help="average the weights of checkpoints of one model")
    average.add_argument("--model", required=True, nargs="+", help="checkpoint folders (the same model and vocabularies)")
    average.add_argument("--out", required=True, help="output checkpoint folder")


def add_preprocess(sub) -> None:
    """``preprocess``: tokenize, index and shard a training corpus once (``nmt.preprocess``)."""
    pre = sub.add_parser("preprocess", help="tokenize and index a training corpus once, into shards (for training "
                                            "from the folder)")
    data = DataConfig()
    pre.add_argument("--train-src", required=True, help="training source file (plain or .gz)")
    pre.add_argument("--train-tgt", required=True, help="training target file (plain or .gz)")
    pre.add_argument("--src-lang", default=data.src_lang, help="source language code (default: %(default)s)")
    pre.add_argument("--tgt-lang", default=data.tgt_lang, help="target language code (default: %(default)s)")
    pre.add_argument("--max-len", type=int, default=data.max_len,
                     help="drop pairs with a side longer than this (tokens; 0: no limit) (default: %(default)s)")
    add_config_args(pre, VocabConfig, "vocabulary")
    sharding = pre.add_mutually_exclusive_group()
    sharding.add_argument("--shards", type=int, default=0, help="this many shards of equal size")
    sharding.add_argument("--shard-size", type=int, default=0,
                          help="shards of this many pairs (neither: shards of a million pairs)")
    pre.add_argument("--workers", type=int, default=0, help="tokenizing processes (default 0: one per CPU core)")
    pre.add_argument("--out", required=True, help="output folder (written atomically)")
    pre.add_argument("--overwrite", action="store_true",
                     help="replace --out if it is a preprocessed folder (atomically); without, an existing --out "
                          "is refused")


def read_source(path: str) -> list[str]:
    """The lines of ``path``, or of standard input for ``-``: only ``\n`` ends a line, as in files."""
    from nmt.data import read_lines
    from nmt.errors import DataError
    from nmt.safe_io import decode_lines

    if path != "-":
        return read_lines(path)
    lines = decode_lines(sys.stdin.buffer.read(), "<stdin>")
    if not lines:
        raise DataError("<stdin>: no input (give one sentence per line)")
    return lines


def cmd_train(args) -> None:
    from nmt.training.trainer import Trainer

    best = Trainer(config_from_args(DataConfig, args), config_from_args(VocabConfig, args),
                   config_from_args(ModelConfig, args), config_from_args(TrainConfig, args)).run()
    if os.environ.get("RANK", "0") == "0":  # (under torchrun: process 0 speaks for all)
        print(f"best checkpoint: {best}")


@contextlib.contextmanager
def _output(path: str, what: str = "output file"):
    """Standard output for '' or '-', else a file written atomically (never left half-written)."""
    from nmt.safe_io import atomic_output

    if path in ("", "-"):
        yield sys.stdout
        return
    with atomic_output(path, what) as fh:
        yield fh


def _check_outputs(*paths: str) -> None:
    """Refuse unusable output paths before any work is done."""
    from nmt.errors import DataError

    for path in paths:
        if path and path != "-" and (Path(path).is_dir() or not Path(path).parent.is_dir()):
            problem = "is a folder" if Path(path).is_dir() else "is in a folder that does not exist"
            raise DataError(f"{path}: the output {problem}; give a file name")


def cmd_translate(args) -> None:
    from nmt.evaluation import perplexity
    from nmt.serving.translator import Translator

    _check_outputs(args.output, args.attention_out)
    cfg, engine = _decoding(args)
    translator = Translator.load(args.model, device=args.device)
    sources = read_source(args.src)
    references = _read_references(args.score_gold, len(sources)) if args.score_gold else None
    results = translator.translate(sources, cfg, engine)
    with _output(args.output) as out:
        for i, r in enumerate(results):
            if cfg.n_best > 1:
                for rank, c in enumerate(r.n_best, start=1):
                    out.write(f"{rank if args.n_best_numbering == 'rank' else i} ||| {c.text} ||| {c.score:.4f}\n")
            else:
                out.write(r.text + "\n")
    if args.attention_out:
        _write_attention(args.attention_out, translator, results)
    if references is not None:
        scores = translator.score(sources, references, alternatives=0)
        for i, scored in enumerate(scores):
            print(f"SENT {i}: GOLD SCORE {scored.log_prob:.4f}", file=sys.stderr)
        total, n = sum(s.log_prob for s in scores), sum(len(s.token_log_probs) for s in scores)
        print(f"GOLD: log-likelihood {total:.2f} over {n} tokens, perplexity {perplexity(total, n):.2f}", file=sys.stderr)


def _write_attention(path: str, translator, results) -> None:
    """JSON lines: tokens, score and attention per sentence; an ensemble's also per model."""
    with _output(path, "attention file") as f:
        for r in results:
            record = {"src": r.src_tokens, "tgt": r.tokens, "score": r.score,
                      "attention": r.attention.tolist() if r.attention is not None else None}
            if translator.is_ensemble and r.n_best:
                record["attention_by_model"] = [a.tolist() if a is not None else None
                                                for a in translator.attention_by_model(r)]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _decoding(args) -> tuple[DecodeConfig, EngineConfig]:
    """The decoding and engine settings of the command line, checked before any work."""
    cfg, engine = config_from_args(DecodeConfig, args), config_from_args(EngineConfig, args)
    cfg.validate()
    engine.validate()
    return cfg, engine


def _read_references(path: str, n: int) -> list[str]:
    from nmt.data import read_lines
    from nmt.errors import DataError

    references = read_lines(path)
    if len(references) != n:
        raise DataError(f"{path} has {len(references)} lines but the source has {n}")
    return references


def cmd_evaluate(args) -> None:
    from nmt.data import read_parallel
    from nmt.evaluation import corpus_scores, perplexity
    from nmt.rescoring import oracle, sentence_scorer
    from nmt.serving.translator import Translator

    _check_outputs(args.output)
    cfg, engine = _decoding(args)
    if args.rescore:
        sentence_scorer(args.rescore, args.rescore_param)  # (its settings checked before any work)
        if cfg.n_best < 2:
            raise NMTError("--rescore chooses from n-best lists: give --n-best 2 or more (and a beam at least as wide)")
    translator = Translator.load(args.model, device=args.device)
    sources, refs = read_parallel(args.src, args.ref)
    results = translator.translate(sources, cfg, engine)
    hyps = [r.text for r in results]
    if args.output:
        with _output(args.output) as out:
            out.write("".join(h + "\n" for h in hyps))
    scores = translator.score(sources, refs, alternatives=0)
    total, n = sum(s.log_prob for s in scores), sum(len(s.token_log_probs) for s in scores)
    print(corpus_scores(hyps, refs))
    print(f"perplexity = {perplexity(total, n):.2f}")
    if args.rescore:
        n_best = [[c.text for c in r.n_best] for r in results]
        picks = oracle(n_best, refs, args.rescore, args.rescore_param)
        chosen = [texts[p] if texts else "" for texts, p in zip(n_best, picks)]
        print(f"oracle of the {cfg.n_best}-best lists by sentence {args.rescore.upper()}-{args.rescore_param} "
              f"({sum(p > 0 for p in picks)} of {len(picks)} sentences changed):")
        print(corpus_scores(chosen, refs))


def cmd_score(args) -> None:
    from nmt.evaluation import corpus_scores

    hyps = read_source(args.hyp)
    ref_sets = [_read_references(path, len(hyps)) for path in args.ref]
    print(corpus_scores(hyps, *ref_sets, ter=True))


def cmd_extract(args) -> None:
    from nmt.data import read_parallel
    from nmt.errors import DataError
    from nmt.serving.extraction import extract, summary
    from nmt.serving.translator import Translator

    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise DataError(f"{args.out}: exists and is not a folder")
    sources, targets = read_parallel(args.src, args.tgt)
    translator = Translator.load(args.model, device=args.device)
    print(summary(extract(translator, sources, targets, args.out, batch_size=args.batch_size)))


def cmd_push(args) -> None:
    from nmt.hub import push_checkpoint

    print(push_checkpoint(args.model, args.repo_id, private=args.private, revision=args.revision))


def cmd_index(args) -> None:
    from nmt.data import read_parallel
    from nmt.errors import DataError
    from nmt.hub import INDEX_FILES
    from nmt.serving.neighbors import IndexSettings, build_index
    from nmt.serving.translator import Translator

    if not Path(args.model).is_dir():
        raise DataError(f"{args.model}: no such checkpoint folder (the index is written into a local checkpoint folder)")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1 (got {args.batch_size})")
    sources, targets = read_parallel(args.src, args.tgt)
    translator = Translator.load(Path(args.model), device=args.device)
    config = build_index(translator, sources, targets, args.model, IndexSettings(batch_size=args.batch_size))
    size = sum((Path(args.model) / name).stat().st_size for name in INDEX_FILES) / 1e6
    print(f"indexed {config['sentences']:,} sentence pairs: {config['target']['positions']:,} target and "
          f"{config['source']['positions']:,} source states, {size:.1f} MB in {args.model} "
          f"({config['build_seconds']:.0f} s)")


def cmd_prune(args) -> None:
    from nmt.training.prune import prune_checkpoint

    out, record = prune_checkpoint(args.model, args.ratio, args.method, args.out or None)
    sparse, dense = record["sparse_bytes"] / 1e6, record["dense_fp16_bytes"] / 1e6
    print(f"pruned {record['ratio']:.1%} of the weights (class-{record['method']}) into {out}; stored sparsely "
          f"(bitmask + fp16 values) {sparse:.2f} MB, dense fp16 {dense:.2f} MB")
    for cls, fraction in record["classes"].items():
        print(f"  {cls}: {fraction:.1%} pruned")


def cmd_average(args) -> None:
    from nmt.training.average import average_checkpoints, check_output_folder, save_derived

    out = check_output_folder(args.out, *args.model)
    save_derived(average_checkpoints(args.model), out)
    print(f"averaged {len(args.model)} checkpoints into {out}")


def cmd_align(args) -> None:
    import time

    from nmt.alignment import align_pairs, coverage, write_alignments
    from nmt.data import read_parallel, tokenize_all
    from nmt.errors import DataError

    _check_outputs(args.out)
    if len(args.extra_src) != len(args.extra_tgt):
        raise DataError(f"{len(args.extra_src)} --extra-src but {len(args.extra_tgt)} --extra-tgt files: "
                        "give them in pairs")
    files = [(args.src, args.tgt), *zip(args.extra_src, args.extra_tgt)]
    texts = [read_parallel(src, tgt) for src, tgt in files]  # (all read and checked before any work)
    start = time.perf_counter()
    src = [tokens for s, _ in texts for tokens in tokenize_all(s, args.src_lang)]
    tgt = [tokens for _, t in texts for tokens in tokenize_all(t, args.tgt_lang)]
    tokenized = time.perf_counter()
    _, _, links = align_pairs(src, tgt)
    n = len(texts[0][0])
    write_alignments(args.out, links[:n])
    print(f"aligned {len(src):,} sentence pairs (tokenizing {tokenized - start:.1f} s, eflomal both ways and "
          f"symmetrising {time.perf_counter() - tokenized:.1f} s); wrote the {n:,} of {args.src} to {args.out}: "
          f"{coverage(links[:n], map(len, tgt[:n])):.1%} of the target words linked")


def cmd_preprocess(args) -> None:
    from nmt.preprocess import preprocess

    m = preprocess(args.train_src, args.train_tgt, args.out, args.src_lang, args.tgt_lang, args.max_len,
                   config_from_args(VocabConfig, args), shards=args.shards, shard_size=args.shard_size,
                   workers=args.workers, overwrite=args.overwrite)
    print(f"preprocessed {m['pairs']:,} pairs (dropped {m['dropped']['empty']:,} empty, {m['dropped']['long']:,} "
          f"longer than {args.max_len}) into {args.out}: {len(m['shards'])} shard(s), vocabularies of "
          f"{m['vocabularies']['src']['size']:,} source and {m['vocabularies']['tgt']['size']:,} target words")


COMMANDS = {"train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate, "score": cmd_score,
            "extract": cmd_extract, "push": cmd_push, "index": cmd_index, "prune": cmd_prune, "average": cmd_average,
            "align": cmd_align, "preprocess": cmd_preprocess}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        COMMANDS[args.command](args)
    except (NMTError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # (a file the command names could not be read or written)
        print(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: the message, and the traceback only with NMT_DEBUG=1
        if os.environ.get("NMT_DEBUG") == "1":
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); NMT_DEBUG=1 shows where", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``nmt`` command (``pip install -e .``), the same as ``python -m nmt``."""
    sys.exit(main())
