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
FEATURE_MODES = ("", "case", "inline")  # source word features: none, the built-in case feature, word-|-feat tokens
RNN_TYPES, BRNN_MERGES, DECODERS = ("lstm", "gru"), ("concat", "sum"), ("luong", "bahdanau")
OPTIMIZERS = ("sgd", "adagrad", "adadelta", "adam")
# Upper bounds that keep a config (which may come from an untrusted checkpoint) from asking for
# absurd allocations; the total size of a loaded model has its own limit (nmt.checkpoint).
MAX_LAYERS, MAX_WIDTH, MAX_VOCAB, MAX_FEATURES = 16, 8192, 2_000_000, 16
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
    curriculum: int = _help("train the first N epochs on batches in order of length, short first (seq2seq-attn "
                            "-curriculum)", default=0)
    unkfilter: float = _help("drop training pairs with more than N unknown words (N >= 1) or more than this "
                             "fraction of their words unknown (0 < N < 1); 0: keep every pair", default=0.0)
    data: str = _help("a folder written by python -m nmt preprocess (tokenized, indexed, sharded): replaces "
                      "--train-src/--train-tgt and the vocabulary settings", default="")
    alignfile: str = _help("Pharaoh word alignments of the training pairs (i-j per link, one line per pair, on "
                           "the Moses tokens): for --guided-alignment", default="")
    alignvalfile: str = _help("Pharaoh word alignments of the validation pairs (the alignment loss is reported)",
                              default="")


@dataclass
class VocabConfig:
    """How the word vocabularies are built from the training data."""

    src_vocab_size: int = _help("keep at most this many source words", default=50000)
    tgt_vocab_size: int = _help("keep at most this many target words", default=50000)
    min_freq: int = _help("keep words seen at least this often", default=1)
    src_vocab_file: str = _help("preset source vocabulary: one word per line, most frequent first (a count or id "
                                "after a space is ignored; seq2seq-attn -srcvocabfile)", default="")
    tgt_vocab_file: str = _help("preset target vocabulary (as --src-vocab-file; seq2seq-attn -targetvocabfile)",
                                default="")


@dataclass
class ModelConfig:
    """The network. Stored in the checkpoint; vocabulary sizes are filled in at build time."""

    emb_size: int = _help("word embedding size", default=256)
    hidden: int = _help("LSTM hidden size (bi-LSTM: split over the two directions)", default=256)
    layers: int = _help("LSTM layers in the encoder and in the decoder", default=1)
    brnn: bool = _help("bidirectional encoder", default=True)
    reverse_src: bool = _help("encode the source reversed (Sutskever et al.)", default=False)
    start_symbol: bool = _help("the encoder reads <s> source </s> (seq2seq-attn -start_symbol); attention stays "
                               "over the source words (word inputs only)", default=False)
    attention: str = _help("global attention kind", default="general", meta={"choices": ATTENTION_KINDS})
    input_feed: bool = _help("Luong input feeding (ignored with attention none)", default=True)
    init_dec: bool = _help("initialise the decoder from the encoder's final state (else zeros)", default=True)
    bridge: bool = _help("pass the encoder's final state through a linear+tanh bridge", default=False)
    dropout: float = _help("dropout on embeddings, between layers and on the decoder output", default=0.3)
    tie_embeddings: bool = _help("share decoder input embeddings with the output layer", default=False)
    param_init: float = _help("uniform initialisation range (0: PyTorch defaults)", default=0.1)
    rnn_type: str = _help("recurrent cell of the encoder and the decoder", default="lstm", meta={"choices": RNN_TYPES})
    res_net: bool = _help("residual connections between stacked layers (seq2seq-attn -res_net)", default=False)
    multi_attn: int = _help("also attend on decoder layer N's output, the input of layer N+1 (seq2seq-attn "
                            "-multi_attn; 0: off)", default=0)
    brnn_merge: str = _help("how a bidirectional encoder joins its directions: concat (half-size directions) or "
                            "sum (full-size directions, seq2seq-attn)", default="concat", meta={"choices": BRNN_MERGES})
    enc_hidden: int = _help("encoder size (0: --hidden); another size needs --bridge with --init-dec",
                            default=0)
    decoder: str = _help("luong (attention after the RNN, input feeding) or bahdanau (attention from the previous "
                         "state, the context in the RNN's input)", default="luong", meta={"choices": DECODERS})
    src_vocab: int = _help("source vocabulary size (set from the data)", default=0)
    tgt_vocab: int = _help("target vocabulary size (set from the data)", default=0)
    # Input layers (nmt.model.embeddings; seq2seq-attn's names)
    use_chars_enc: bool = _help("read source words as their characters: char-CNN + highway (Kim et al. 2016)",
                                default=False)
    use_chars_dec: bool = _help("read the decoder's previous word as its characters (the output stays words)",
                                default=False)
    char_vec_size: int = _help("character embedding size", default=25)
    kernel_width: int = _help("width of the character convolution", default=6)
    num_kernels: int = _help("character convolution filters: the size of a word's vector", default=1000)
    num_highway_layers: int = _help("highway layers after the character convolution", default=2)
    max_word_length: int = _help("characters read per word, its begin and end marks included (seq2seq-attn "
                                 "maxwordlength)", default=35)
    src_features: str = _help("source word features: none, 'case' (built in: the word's case, words looked up "
                              "lower-cased) or 'inline' (a tokenized source of word-|-feat1-|-feat2 tokens)",
                              default="", meta={"choices": FEATURE_MODES})
    feature_vec_size: int = _help("embedding size of each word feature (0: N ** --feature-embeddings-dim-exponent "
                                  "for N values)", default=0)
    feature_embeddings_dim_exponent: float = _help("see --feature-vec-size", default=0.7)
    char_vocab: int = field(default=0)  # characters (set from the data)
    feature_vocabs: tuple = field(default=())  # values of each source feature (set from the data)

    def validate(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.brnn and self.brnn_merge == "concat" and self.encoder_size % 2:
            size = "--enc-hidden" if self.enc_hidden else "--hidden"
            raise ValueError(f"a bidirectional encoder needs an even {size} (or --brnn-merge sum)")
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
        self._validate_options()
        self._validate_inputs()

    def _validate_inputs(self) -> None:
        if self.start_symbol and (self.use_chars_enc or self.src_features):
            raise ValueError("--start-symbol reads the source's <s> and </s> as words: not with --use-chars-enc "
                             "or --src-features")
        if self.src_features not in FEATURE_MODES:
            raise ValueError(f"--src-features must be one of {FEATURE_MODES}, got {self.src_features!r}")
        if self.use_chars_dec and self.tie_embeddings:
            raise ValueError("--tie-embeddings needs word embeddings on the decoder side (not --use-chars-dec)")
        sizes = (self.char_vec_size, self.kernel_width, self.num_kernels, self.max_word_length)
        if any(not 1 <= n <= MAX_WIDTH for n in sizes) or not 0 <= self.num_highway_layers <= MAX_LAYERS:
            raise ValueError(f"--char-vec-size, --kernel-width, --num-kernels and --max-word-length must be 1-{MAX_WIDTH}, "
                             f"--num-highway-layers 0-{MAX_LAYERS}")
        if self.kernel_width > self.max_word_length:
            raise ValueError("--kernel-width must be at most --max-word-length")
        if not 0 <= self.char_vocab <= MAX_VOCAB or len(self.feature_vocabs) > MAX_FEATURES:
            raise ValueError(f"at most {MAX_VOCAB:,} characters and {MAX_FEATURES} features")
        if any(not 0 <= n <= MAX_VOCAB for n in self.feature_vocabs) or not 0 <= self.feature_vec_size <= MAX_WIDTH:
            raise ValueError(f"feature vocabularies of at most {MAX_VOCAB:,} values, --feature-vec-size at most {MAX_WIDTH}")
        if not 0.0 < self.feature_embeddings_dim_exponent <= 1.0:
            raise ValueError("--feature-embeddings-dim-exponent must be in (0, 1]")

    @property
    def encoder_size(self) -> int:
        """The encoder's output (memory) size: --enc-hidden, or --hidden when that is 0."""
        return self.enc_hidden or self.hidden

    def _validate_options(self) -> None:
        """The checks of the cell, residual, multi-attention, merge, encoder-size and decoder options."""
        for name, value, choices in (("rnn_type", self.rnn_type, RNN_TYPES), ("decoder", self.decoder, DECODERS),
                                     ("brnn_merge", self.brnn_merge, BRNN_MERGES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not 0 <= self.enc_hidden <= MAX_WIDTH:
            raise ValueError(f"--enc-hidden must be between 0 (--hidden) and {MAX_WIDTH}")
        if self.encoder_size != self.hidden and self.attention == "dot":
            raise ValueError("dot attention needs the encoder and decoder sizes to match (--enc-hidden): "
                             "use general or concat attention")
        if self.encoder_size != self.hidden and self.init_dec and not self.bridge:
            raise ValueError("--enc-hidden different from --hidden needs --bridge to initialise the decoder "
                             "(or --no-init-dec)")
        if self.multi_attn and not 1 <= self.multi_attn < self.layers:
            raise ValueError(f"--multi-attn N attends on a layer below the top one: N must be between 1 and "
                             f"--layers - 1 = {self.layers - 1} (0: off), got {self.multi_attn}")
        if self.multi_attn and (self.attention == "none" or self.decoder != "luong"):
            raise ValueError("--multi-attn needs an attention kind and --decoder luong")
        if self.decoder == "bahdanau" and self.attention == "none":
            raise ValueError("--decoder bahdanau needs an attention kind (dot, general or concat)")


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
    train_from: str = _help("a save dir: resume its run exactly (its own settings; --fine-tune to change them); "
                            "a model folder (best/, a pruned or averaged model): fine-tune it", default="")
    fine_tune: bool = _help("with --train-from: continue from its weights with this command's data and training "
                            "settings, a new optimizer and schedule (seq2seq-attn train_from)", default=False)
    start_epoch: int = _help("fine-tuning: number the first epoch this (seq2seq-attn -start_epoch)", default=1)
    layer_lrs: str = _help("learning rates of the encoder, decoder and output layer, comma-separated (seq2seq-attn "
                           "-layer_lrs; decayed together); empty: --learning-rate for all", default="")
    keep_checkpoints: int = _help("also keep the last N epochs' checkpoints as epoch-K/ folders (for python -m "
                                  "nmt average)", default=0)
    save_every: int = _help("with --keep-checkpoints: keep every Nth epoch's checkpoint", default=1)
    print_every: int = _help("log the running loss every N batches (0: the progress bar only)", default=0)
    track_sentences: int = _help("after every epoch, record the greedy translation and attention of the first N "
                                 "validation sentences (tracked.jsonl: the app shows attention forming; 0: none)",
                                 default=3)
    track_file: str = _help("sentences to track instead of the first validation ones (one per line, raw text)",
                            default="")
    guided_alignment: bool = _help("add a loss between the attention and --alignfile's links (Chen et al. 2016)",
                                   default=False)
    guided_alignment_weight: float = _help("the alignment loss's weight at epoch 1", default=0.5)
    guided_alignment_decay: float = _help("multiply the alignment loss's weight by this after every epoch",
                                          default=1.0)
    pre_word_vecs_enc: str = _help("pretrained source word vectors: a word2vec/GloVe text file (.gz too) or a "
                                   ".safetensors/.npy matrix in vocabulary order", default="")
    pre_word_vecs_dec: str = _help("pretrained target word vectors (as --pre-word-vecs-enc)", default="")
    fix_word_vecs_enc: bool = _help("keep the source word embeddings fixed (not trained)", default=False)
    fix_word_vecs_dec: bool = _help("keep the target word embeddings fixed (not trained)", default=False)
    dist_timeout: float = _help("under torchrun: seconds a process waits for the others (a collective, process 0's "
                                "validation and checkpoint) before it stops with an error", default=600.0)


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
    if isinstance(default, tuple):  # (a tuple of non-negative integers, a JSON list)
        ok = isinstance(value, (list, tuple)) and len(value) <= 64 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        if not ok:
            raise ValueError(f"{where!r} must be a list of at most 64 non-negative integers")
        return tuple(value)
    if default is None or isinstance(default, bool):
        ok, kind = isinstance(value, bool) or (default is None and value is None), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int), "an integer"  # (a bool: a count that was once a switch, curriculum)
        value = int(value) if ok else value
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
