"""Configuration: one dataclass per concern.

Every field maps one to one onto a command-line flag (``emb_size`` -> ``--emb-size``,
see :mod:`nmt.cli`), and the model/vocabulary configs are stored in the checkpoint's
``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
ATTENTION_KINDS = ("none", "dot", "general", "concat")
OPTIMIZERS = ("sgd", "adagrad", "adadelta", "adam")
# Upper bounds that keep a config (which may come from an untrusted checkpoint) from asking for
# absurd allocations; the total size of a loaded model has its own limit (nmt.checkpoint).
MAX_LAYERS, MAX_WIDTH, MAX_VOCAB = 16, 8192, 2_000_000
MAX_BEAM_SIZE = 100  # beam 1000 took 585 MB for two sentences; seq2seq-attn's default is 5
MAX_LEN_A, MAX_LEN_B = 10.0, 1000  # output length = a * source length + b
MAX_LENGTH_PENALTY = 10.0
MAX_DECODE_BATCH, MAX_INTER_THREADS = 10_000, 64


def _help(text: str, **kw: Any) -> Any:
    """A dataclass field whose help text the CLI shows."""
    return field(metadata={"help": text, **kw.pop("meta", {})}, **kw)


@dataclass
class DataConfig:
    """Where the parallel text is and how it is batched."""

    train_src: str = _help("training source file (plain or .gz, one sentence per line)", default="")
    train_tgt: str = _help("training target file", default="")
    valid_src: str = _help("validation source file", default="")
    valid_tgt: str = _help("validation target file", default="")
    src_lang: str = _help("source language code (Moses tokenizer)", default="de")
    tgt_lang: str = _help("target language code", default="en")
    max_len: int = _help("drop training pairs with a side longer than this (tokens)", default=50)
    batch_size: int = _help("sentences per batch", default=64)
    curriculum: bool = _help("first epoch in length order (seq2seq-attn -curriculum)", default=False)


@dataclass
class VocabConfig:
    """How the word vocabularies are built from the training data."""

    src_vocab_size: int = _help("keep at most this many source words", default=50000)
    tgt_vocab_size: int = _help("keep at most this many target words", default=50000)
    min_freq: int = _help("keep words seen at least this often", default=1)


@dataclass
class ModelConfig:
    """The network. Stored in the checkpoint; vocabulary sizes are filled in at build time."""

    emb_size: int = _help("word embedding size", default=256)
    hidden: int = _help("LSTM hidden size (bi-LSTM: split over the two directions)", default=256)
    layers: int = _help("LSTM layers in the encoder and in the decoder", default=1)
    brnn: bool = _help("bidirectional encoder", default=True)
    reverse_src: bool = _help("encode the source reversed (Sutskever et al.)", default=False)
    attention: str = _help("global attention kind", default="general", meta={"choices": ATTENTION_KINDS})
    input_feed: bool = _help("Luong input feeding (ignored with attention none)", default=True)
    init_dec: bool = _help("initialise the decoder from the encoder's final state (else zeros)", default=True)
    bridge: bool = _help("pass the encoder's final state through a linear+tanh bridge", default=False)
    dropout: float = _help("dropout on embeddings, between layers and on the decoder output", default=0.3)
    tie_embeddings: bool = _help("share decoder input embeddings with the output layer", default=False)
    param_init: float = _help("uniform initialisation range (0: PyTorch defaults)", default=0.1)
    src_vocab: int = _help("source vocabulary size (set from the data)", default=0)
    tgt_vocab: int = _help("target vocabulary size (set from the data)", default=0)

    def validate(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.brnn and self.hidden % 2:
            raise ValueError("a bidirectional encoder needs an even --hidden")
        if self.tie_embeddings and self.emb_size != self.hidden:
            raise ValueError("--tie-embeddings needs --emb-size equal to --hidden")
        if self.layers < 1 or self.hidden < 1 or self.emb_size < 1:
            raise ValueError("--layers, --hidden and --emb-size must be positive")
        if self.layers > MAX_LAYERS or self.hidden > MAX_WIDTH or self.emb_size > MAX_WIDTH:
            raise ValueError(f"--layers must be at most {MAX_LAYERS}, --hidden and --emb-size at most {MAX_WIDTH}")
        if not 0 <= self.src_vocab <= MAX_VOCAB or not 0 <= self.tgt_vocab <= MAX_VOCAB:
            raise ValueError(f"vocabulary sizes must be between 0 and {MAX_VOCAB:,}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("--dropout must be in [0, 1)")
        if not 0.0 <= self.param_init < math.inf:
            raise ValueError("--param-init must be a finite number, at least 0")


@dataclass
class TrainConfig:
    """The optimisation."""

    save_dir: str = _help("folder for checkpoints and metrics", default="runs/model")
    epochs: int = _help("number of epochs", default=15)
    optim: str = _help("optimizer", default="adam", meta={"choices": OPTIMIZERS})
    learning_rate: float = _help("initial learning rate", default=0.001)
    lr_decay: float = _help("multiply the learning rate by this on decay", default=0.5)
    start_decay_at: int = _help("decay every epoch from this epoch on (0: never)", default=0)
    decay_on_plateau: bool = _help("decay when validation perplexity does not improve", default=True)
    max_grad_norm: float = _help("clip the gradient norm to this (0: no clipping)", default=5.0)
    label_smoothing: float = _help("label smoothing epsilon", default=0.0)
    scheduled_sampling: float = _help("probability of feeding the model's own prediction", default=0.0)
    seed: int = _help("random seed", default=3435)
    device: str = _help("cpu, cuda or auto", default="auto")
    amp: bool | None = _help("mixed precision (bf16 autocast); unset: on with CUDA, off on a CPU", default=None,
                             meta={"flag": True})
    threads: int = _help("CPU threads (0: PyTorch default)", default=0)
    valid_bleu_sents: int = _help("validation sentences greedily decoded for the epoch BLEU (0: all)", default=0)
    select_by: str = _help("keep the best checkpoint by this validation score", default="bleu", meta={"choices": ("bleu", "ppl")})
    train_from: str = _help("resume from this save dir's last checkpoint", default="")


@dataclass
class DecodeConfig:
    """What search looks for (the checkpoint's ``decode`` defaults); how it runs is ``EngineConfig``."""

    beam_size: int = _help("beam size (1: greedy)", default=5)
    n_best: int = _help("hypotheses returned per sentence", default=1)
    length_penalty: float = _help("alpha: scores are log-prob / length**alpha", default=0.0)
    max_len_a: float = _help("maximum output length = a * source length + b", default=2.0)
    max_len_b: int = _help("see --max-len-a", default=10)
    simple: bool = _help("stop a sentence as soon as the best candidate of a step ends (seq2seq-attn -simple 1; "
                         "faster, may differ with a length penalty or --n-best > 1)", default=False)
    max_sent_l: int = _help("refuse a source longer than this many tokens, naming its line (0: no limit)", default=0)
    replace_unk: bool = _help("replace <unk> by the most attended source word", default=False)
    lexicon: str = _help("'source ||| target' file used by --replace-unk", default="")
    batch_size: int = _help("sentences per batch", default=30)

    def validate(self) -> None:
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"the beam size must be between 1 and {MAX_BEAM_SIZE} (got {self.beam_size})")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be between 1 and the beam size ({self.beam_size})")
        if not 0.0 <= self.max_len_a <= MAX_LEN_A:  # (also NaN)
            raise ValueError(f"--max-len-a must be between 0 and {MAX_LEN_A:g} (got {self.max_len_a})")
        if not 0 <= self.max_len_b <= MAX_LEN_B or (self.max_len_b == 0 and self.max_len_a == 0):
            raise ValueError(f"--max-len-b must be between 0 and {MAX_LEN_B}, and outputs must be allowed "
                             f"at least one word (got a={self.max_len_a}, b={self.max_len_b})")
        if not 0.0 <= self.length_penalty <= MAX_LENGTH_PENALTY:
            raise ValueError(f"--length-penalty must be between 0 and {MAX_LENGTH_PENALTY:g} (got {self.length_penalty})")
        if self.max_sent_l < 0:
            raise ValueError(f"--max-sent-l must be at least 0 (0: no limit; got {self.max_sent_l})")
        if not 1 <= self.batch_size <= MAX_DECODE_BATCH:
            raise ValueError(f"the batch size must be between 1 and {MAX_DECODE_BATCH:,}")


@dataclass(frozen=True)
class EngineConfig:
    """How search runs (nmt.engines): none of these changes a translation, but int8's rounding."""

    int8: bool | None = _help("decode with int8 matrix layers on a CPU (faster, slightly different scores); unset: "
                              "on where the checkpoint records an int8 validation BLEU within 0.3 of fp32's, else "
                              "off (exact fp32)", default=None, meta={"flag": True})
    inter_threads: int = _help("batches searched at once on a CPU, sharing its threads (CTranslate2's "
                               "inter_threads); the same translations (0: as many as the CPU threads, at most 4)",
                               default=0)
    trace: bool = _help("run the decoder step as a TorchScript trace on a CPU (less Python overhead); "
                        "the same translations", default=True)
    cuda_graphs: bool = _help("replay each search step as a CUDA graph on a GPU (one launch a step instead of "
                              "dozens); the same translations", default=True)

    def validate(self) -> None:
        if not 0 <= self.inter_threads <= MAX_INTER_THREADS:
            raise ValueError(f"inter_threads must be between 0 (automatic) and {MAX_INTER_THREADS}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Any, section: str = "") -> Any:
    """Build ``cls`` from a dict (a config.json section), ignoring unknown keys (forward compatible).

    Every known value must have its field's type (an int where a float is expected is fine), so a
    malformed or hostile config is refused with a ValueError that names the entry."""
    where = section or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where!r} must be a JSON object, not {type(data).__name__}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _checked(data[f.name], f.default, f"{where}.{f.name}")
    return cls(**values)


def _checked(value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the type of ``default`` (a float field takes an int; None fields take a bool)."""
    if default is None or isinstance(default, bool):
        ok, kind = isinstance(value, bool) or (default is None and value is None), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        try:
            value = float(value) if ok else value
        except OverflowError:  # (JSON integers may have thousands of digits)
            ok, kind = False, "a number of a float's range"
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"{where!r} must be {kind}, not {type(value).__name__}")
    return value
