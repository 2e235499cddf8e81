"""What a run trains and validates on: the training pairs (raw files tokenized now, or a ``python -m nmt
preprocess`` folder), their word alignments, the validation pairs, and the vocabularies: built from the
tokenized training data (words, and characters and feature values: ``nmt.inputs``), read from preset
files, or a resumed or fine-tuned checkpoint's."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nmt.alignment import read_alignments
from nmt.config import MAX_VOCAB, DataConfig, ModelConfig, VocabConfig
from nmt.data import ParallelDataset, read_lines, read_parallel, tokenize_all, tokenize_pairs
from nmt.errors import DataError
from nmt.inputs import SourceInputs, char_vocabulary
from nmt.preprocess import ShardedDataset
from nmt.vocabulary import SPECIALS, Vocabulary

log = logging.getLogger(__name__)


class Vocabularies:
    """A new run's vocabularies, in the shape of a checkpoint's (``src_vocab``, ``inputs``...)."""

    def __init__(self, src_vocab, tgt_vocab, chars, features, cfg: ModelConfig):
        self.src_vocab, self.tgt_vocab, self.chars, self.features = src_vocab, tgt_vocab, chars, features
        self.inputs = SourceInputs(src_vocab, cfg.src_features, chars if cfg.use_chars_enc else None, features,
                                   cfg.max_word_length)


def build_vocabularies(src_tok: list[list[str]], tgt_tok: list[list[str]], m: ModelConfig, v: VocabConfig,
                       parsed: list[tuple] | None = None) -> Vocabularies:
    """New vocabularies of the tokenized training data; their sizes go into ``m`` (the model's config).
    ``parsed``: ``SourceInputs.parse_all(src_tok, m.src_features)``, if made already."""
    parsed = SourceInputs.parse_all(src_tok, m.src_features) if parsed is None else parsed
    words = [w for w, _, _ in parsed]
    chars = char_vocabulary(words + (tgt_tok if m.use_chars_dec else [])) if m.use_chars_enc or m.use_chars_dec else None
    inputs = SourceInputs.build(src_tok, m.src_features, chars, m.max_word_length, v.src_vocab_size, v.min_freq, parsed)
    if v.src_vocab_file:
        inputs = SourceInputs(read_vocab_file(v.src_vocab_file), m.src_features, chars, inputs.features,
                              m.max_word_length)
    tgt_vocab = (read_vocab_file(v.tgt_vocab_file) if v.tgt_vocab_file
                 else Vocabulary.build(tgt_tok, v.tgt_vocab_size, v.min_freq))
    m.src_vocab, m.tgt_vocab = len(inputs.words), len(tgt_vocab)
    m.char_vocab, m.feature_vocabs = len(chars) if chars else 0, tuple(len(f) for f in inputs.features)
    return Vocabularies(inputs.words, tgt_vocab, chars, inputs.features, m)


def read_vocab_file(path: str) -> Vocabulary:
    """A preset vocabulary: one word per line, in order (the first field: a count or id after it, as in
    seq2seq-attn's .dict files, is ignored); the specials come first whether the file lists them or not."""
    words = [line.split()[0] if line.strip() else "" for line in read_lines(path)]
    seen: dict[str, int] = {}
    for number, word in enumerate(words, start=1):
        if not word:
            raise DataError(f"{path} line {number}: an empty line (one word per line)")
        if word in seen and word not in SPECIALS:
            raise DataError(f"{path} line {number}: {word[:60]!r} again (first on line {seen[word]})")
        seen.setdefault(word, number)
    ordered = list(SPECIALS) + [w for w in seen if w not in SPECIALS]
    if len(ordered) > MAX_VOCAB:
        raise DataError(f"{path}: {len(ordered):,} words, more than {MAX_VOCAB:,}")
    return Vocabulary(ordered)


def unknown_filter(src_keys: list[list[str]], tgt_tok: list[list[str]], src_vocab: Vocabulary,
                   tgt_vocab: Vocabulary, limit: float) -> list[int]:
    """The pairs seq2seq-attn's ``unkfilter`` keeps: at most ``limit`` unknown words on each side
    (``limit`` >= 1), or at most that fraction of each side's words (0 < ``limit`` < 1).
    ``src_keys``: the source words as the vocabulary knows them (``SourceInputs.parse_all``)."""
    if not limit >= 0:
        raise ValueError(f"--unkfilter must be 0, a fraction in (0, 1) or a count >= 1 (got {limit})")

    def ok(words: list[str], vocab: Vocabulary) -> bool:
        unknown = sum(w not in vocab.stoi for w in words)
        return unknown <= (limit if limit >= 1 else limit * len(words))

    return [i for i, (s, t) in enumerate(zip(src_keys, tgt_tok)) if ok(s, src_vocab) and ok(t, tgt_vocab)]


def coverage(sentences: list[list[str]], vocab: Vocabulary) -> float:
    """The fraction of the tokens of ``sentences`` that ``vocab`` knows."""
    tokens = sum(len(s) for s in sentences)
    return sum(w in vocab.stoi for s in sentences for w in s) / tokens if tokens else 1.0


@dataclass
class Corpus:
    vocabs: object  # Vocabularies, or the checkpoint whose vocabularies the run keeps
    train: ParallelDataset | ShardedDataset
    train_links: list | None  # per training pair: its word alignment (--alignfile)
    valid: ParallelDataset  # the validation pairs with words on both sides
    valid_links: list | None  # per pair of ``valid`` (--alignvalfile)
    valid_raw_src: list[str]  # every validation line, as read
    valid_raw_tgt: list[str]
    valid_src_tok: list[list[str]]
    valid_ids: list  # every validation source, encoded


def load_corpus(d: DataConfig, m: ModelConfig, v: VocabConfig, saved=None) -> Corpus:
    """The data of ``d``, indexed with ``saved``'s vocabularies, else with new ones (their sizes set in ``m``)."""
    required = ("valid_src", "valid_tgt") if d.data else ("train_src", "train_tgt", "valid_src", "valid_tgt")
    for name in required:
        if not getattr(d, name):
            raise ValueError(f"--{name.replace('_', '-')} is required")
    vocabs, train, links = preprocessed_pairs(d, m, saved) if d.data else raw_training_pairs(d, m, v, saved)
    corpus = validation_pairs(d, m, vocabs, train, links)
    log.info("%d training pairs, %d validation pairs; vocabularies: source %s, target %s words",
             len(corpus.train), len(corpus.valid), vocabs.inputs.describe(), f"{len(vocabs.tgt_vocab):,}")
    return corpus


def raw_training_pairs(d: DataConfig, m: ModelConfig, v: VocabConfig, saved):
    """(vocabularies, training pairs, their links) from the raw files, tokenized now."""
    log.info("reading and tokenizing %s / %s", d.train_src, d.train_tgt)
    src_all, tgt_all, keep = tokenize_pairs(d.train_src, d.train_tgt, d.src_lang, d.tgt_lang, d.max_len, m.src_features)
    links = read_alignments(d.alignfile, [len(x) for x in src_all], [len(x) for x in tgt_all]) if d.alignfile else None
    src_tok, tgt_tok = [src_all[i] for i in keep], [tgt_all[i] for i in keep]
    parsed = SourceInputs.parse_all(src_tok, m.src_features)  # (once: the vocabularies and the filter read it)
    saved = saved or build_vocabularies(src_tok, tgt_tok, m, v, parsed)
    src_keys = [keys for _, keys, _ in parsed]
    log.info("vocabularies cover %.2f%% of the training source tokens and %.2f%% of the target's",
             100 * coverage(src_keys, saved.src_vocab), 100 * coverage(tgt_tok, saved.tgt_vocab))
    if d.unkfilter:
        kept = unknown_filter(src_keys, tgt_tok, saved.src_vocab, saved.tgt_vocab, d.unkfilter)
        log.info("--unkfilter %g: kept %d of %d training pairs", d.unkfilter, len(kept), len(src_tok))
        if not kept:
            raise DataError(f"--unkfilter {d.unkfilter:g} drops every training pair")
        keep, src_tok, tgt_tok = [keep[i] for i in kept], [src_tok[i] for i in kept], [tgt_tok[i] for i in kept]
    train = ParallelDataset([saved.inputs.encode(s, f"{d.train_src} sentence {i + 1}") for i, s in enumerate(src_tok)],
                            [saved.tgt_vocab.encode(t) for t in tgt_tok])
    return saved, train, None if links is None else [links[i] for i in keep]


def preprocessed_pairs(d: DataConfig, m: ModelConfig, saved):
    """(vocabularies, training pairs, None) from a ``python -m nmt preprocess`` folder, whose vocabularies
    a resumed or fine-tuned run must share."""
    if d.unkfilter:
        raise ValueError("--unkfilter applies to raw training files, not to a --data folder (preprocess without it)")
    if m.src_features or m.use_chars_enc or m.use_chars_dec:  # (also a fine-tuned or resumed model's)
        raise DataError(f"{d.data}: a preprocessed folder holds word ids only; character or feature inputs need "
                        "the raw files (--train-src/--train-tgt)")
    data = ShardedDataset.open(d.data)
    if (data.src_lang, data.tgt_lang) != (d.src_lang, d.tgt_lang):
        raise ValueError(f"{d.data} holds {data.src_lang}-{data.tgt_lang} pairs, not {d.src_lang}-{d.tgt_lang} "
                         "(--src-lang/--tgt-lang)")
    if saved is None:
        saved = data.vocabularies(m)
    elif (saved.src_vocab.itos, saved.tgt_vocab.itos) != (data.src_vocab.itos, data.tgt_vocab.itos):
        raise ValueError(f"{d.data} was preprocessed with other vocabularies than the checkpoint's")
    return saved, data, None


def validation_pairs(d: DataConfig, m: ModelConfig, vocabs, train, train_links) -> Corpus:
    """The corpus with its validation pairs (raw files, tokenized now) and, with ``--alignvalfile``, their links."""
    raw_src, raw_tgt = read_parallel(d.valid_src, d.valid_tgt)
    src_tok, tgt_tok = tokenize_all(raw_src, d.src_lang, m.src_features == "inline"), tokenize_all(raw_tgt, d.tgt_lang)
    keep = [i for i, (s, t) in enumerate(zip(src_tok, tgt_tok)) if s and t]
    if not keep:
        raise DataError(f"{d.valid_src} / {d.valid_tgt}: no validation pair has words on both sides "
                        "(the files hold only blank lines)")
    ids = [vocabs.inputs.encode(t, f"{d.valid_src} line {i + 1}") for i, t in enumerate(src_tok)]
    valid = ParallelDataset([ids[i] for i in keep], [vocabs.tgt_vocab.encode(tgt_tok[i]) for i in keep])
    links = None
    if d.alignvalfile:
        every = read_alignments(d.alignvalfile, [len(x) for x in src_tok], [len(x) for x in tgt_tok])
        links = [every[i] for i in keep]
    return Corpus(vocabs, train, train_links, valid, links, raw_src, raw_tgt, src_tok, ids)
