"""The training corpus's vocabularies: built from the tokenized training data (words, and characters
and feature values: ``nmt.inputs``), or read from preset files; shared by ``train`` and ``preprocess``."""

from __future__ import annotations

import logging

from nmt.config import MAX_VOCAB, ModelConfig, VocabConfig
from nmt.data import read_lines
from nmt.errors import DataError
from nmt.inputs import SourceInputs, char_vocabulary
from nmt.vocabulary import SPECIALS, Vocabulary

log = logging.getLogger(__name__)


class Vocabularies:
    """A new run's vocabularies, in the shape of a checkpoint's (``src_vocab``, ``inputs``...)."""

    def __init__(self, src_vocab, tgt_vocab, chars, features, cfg: ModelConfig):
        self.src_vocab, self.tgt_vocab, self.chars, self.features = src_vocab, tgt_vocab, chars, features
        self.inputs = SourceInputs(src_vocab, cfg.src_features, chars if cfg.use_chars_enc else None, features,
                                   cfg.max_word_length)


def build_vocabularies(src_tok: list[list[str]], tgt_tok: list[list[str]], m: ModelConfig, v: VocabConfig) -> Vocabularies:
    """New vocabularies of the tokenized training data; their sizes go into ``m`` (the model's config)."""
    words = [w for w, _, _ in SourceInputs.parse_all(src_tok, m.src_features)]
    chars = char_vocabulary(words + (tgt_tok if m.use_chars_dec else [])) if m.use_chars_enc or m.use_chars_dec else None
    inputs = SourceInputs.build(src_tok, m.src_features, chars, m.max_word_length, v.src_vocab_size, v.min_freq)
    if v.src_vocab_file:
        inputs = SourceInputs(read_vocab_file(v.src_vocab_file), m.src_features, chars, inputs.features, m.max_word_length)
    tgt_vocab = read_vocab_file(v.tgt_vocab_file) if v.tgt_vocab_file else Vocabulary.build(tgt_tok, v.tgt_vocab_size,
                                                                                             v.min_freq)
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
