"""How a source sentence's tokens become the encoder's input ids (``nmt.model.embeddings``).

A word model reads word ids. With character inputs (``use_chars_enc``) a word is read as its
characters, ``<s> c1 ... cn </s>`` cut to ``max_word_length``, so no source word is unknown to the
encoder. With word features every word also carries one value per feature, each from its own
vocabulary (seq2seq-attn's ``word-|-feat1-|-feat2``):

* ``case`` (built in; the case feature of seq2seq-attn's example data): the word is looked up
  lower-cased, and its case is a feature: ``lower``, ``cap`` (an upper-case first letter, no other),
  ``upper`` (every letter upper-case, at least two letters) or ``other``. It runs on plain text.
* ``inline``: the source is tokenized already (split at spaces, as seq2seq-attn's data), each token
  ``word-|-feat1-|-feat2``, every word with the same number of features.

The tokens a ``Translation`` shows are the tokens as given (with inline features); ``words`` gives
the words alone (what UNK replacement copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nmt.config import FEATURE_MODES
from nmt.errors import DataError
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID, Vocabulary

FEATURE_SEP = "-|-"
CASES = ("lower", "cap", "upper", "other")
MAX_CHARS = 100_000  # characters kept (ranked by frequency), beyond which one is <unk>


def case_of(word: str) -> str:
    """The case feature of one word."""
    letters = [c for c in word if c.isalpha()]
    if letters and all(c.islower() for c in letters):
        return "lower"
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "upper"
    if letters and letters[0].isupper() and word[0] == letters[0] and all(c.islower() for c in letters[1:]):
        return "cap"
    return "other"


def split_features(tokens: list[str], where: str = "") -> tuple[list[str], list[list[str]]]:
    """Inline tokens ``word-|-f1-|-f2`` -> the words and each word's feature values; every word must
    carry as many features as the first (an error naming ``where`` and the word otherwise)."""
    words, feats = [], []
    for token in tokens:
        word, *values = token.split(FEATURE_SEP)
        if feats and len(values) != len(feats[0]):
            raise DataError(f"{where or 'the source'}: the word {token[:60]!r} has {len(values)} features, the first "
                            f"word {len(feats[0])} (every word needs the same number, written word{FEATURE_SEP}feature)")
        if not word or any(not v for v in values):
            raise DataError(f"{where or 'the source'}: the token {token[:60]!r} has an empty word or feature")
        words.append(word)
        feats.append(values)
    return words, feats


@dataclass
class SourceInputs:
    """The vocabularies that turn source tokens into encoder input ids."""

    words: Vocabulary  # word ids (kept with character inputs too: unknown-word marks, UNK replacement)
    mode: str = ""  # word features: "", "case" or "inline"
    chars: Vocabulary | None = None  # character ids, with use_chars_enc
    features: list[Vocabulary] = field(default_factory=list)
    max_word_length: int = 35

    @property
    def plain(self) -> bool:
        """Word ids only: the (batch, len) input of a word model."""
        return self.chars is None and not self.features

    def parse(self, tokens: list[str], where: str = "") -> tuple[list[str], list[str], list[list[str]]]:
        """Words as given, their vocabulary keys and their feature values."""
        if self.mode == "inline":
            words, feats = split_features(tokens, where)
            if self.features and feats and len(feats[0]) != len(self.features):
                raise DataError(f"{where or 'the source'}: words carry {len(feats[0])} features, the model reads "
                                f"{len(self.features)} (write each word as word{FEATURE_SEP}feature...)")
            return words, words, feats
        if self.mode == "case":
            return tokens, [t.lower() for t in tokens], [[case_of(t)] for t in tokens]
        return tokens, tokens, [[] for _ in tokens]

    def words_of(self, tokens: list[str]) -> list[str]:
        return self.parse(tokens)[0]

    def unknown(self, tokens: list[str]) -> list[str]:
        """The words the encoder cannot tell apart from <unk> (none with character inputs)."""
        if self.chars is not None:
            return []
        words, keys, _ = self.parse(tokens)
        return [w for w, k in zip(words, keys) if k not in self.words.stoi]

    def encode(self, tokens: list[str], where: str = "") -> list[int] | list[list[int]]:
        """Word ids, or per token a row: the word's id or its character ids, then its feature ids."""
        words, keys, feats = self.parse(tokens, where)
        ids = self.words.encode(keys)
        if self.plain:
            return ids
        heads = [self.spell(w) for w in words] if self.chars is not None else [[i] for i in ids]
        return [head + [v.stoi.get(f, UNK_ID) for v, f in zip(self.features, fs)] for head, fs in zip(heads, feats)]

    def spell(self, word: str) -> list[int]:
        return spell(word, self.chars, self.max_word_length)

    @classmethod
    def build(cls, sentences: list[list[str]], mode: str, chars: Vocabulary | None, max_word_length: int,
              vocab_size: int, min_freq: int = 1, parsed: list[tuple] | None = None) -> "SourceInputs":
        """The vocabularies of the training sources: words (their keys) and feature values; ``chars``
        (``char_vocabulary``) with character inputs. ``parsed``: ``parse_all``'s result, if made already."""
        if mode not in FEATURE_MODES:
            raise ValueError(f"source features must be one of {FEATURE_MODES} (got {mode!r})")
        parsed = cls.parse_all(sentences, mode) if parsed is None else parsed
        words = Vocabulary.build([keys for _, keys, _ in parsed], vocab_size, min_freq)
        n_features = next((len(fs[0]) for _, _, fs in parsed if fs), 0)
        check_feature_count(parsed, n_features)
        features = [Vocabulary.build([[fs[k] for fs in feats] for _, _, feats in parsed], 100_000) for k in range(n_features)]
        return cls(words, mode, chars, features, max_word_length)

    @classmethod
    def parse_all(cls, sentences: list[list[str]], mode: str) -> list[tuple]:
        probe = cls(Vocabulary(SPECIALS), mode)
        return [probe.parse(s, f"training source line {i + 1}") for i, s in enumerate(sentences)]

    def describe(self) -> str:
        parts = [f"{len(self.words):,} words"] + ([f"{len(self.chars):,} characters"] if self.chars else [])
        return ", ".join(parts + [f"feature {k + 1}: {len(v)} values" for k, v in enumerate(self.features)])


def char_vocabulary(sentences: list[list[str]]) -> Vocabulary:
    """Every character of these words (the training source's, and the target's for use_chars_dec)."""
    return Vocabulary.build([list(w) for sentence in sentences for w in sentence], MAX_CHARS)


def spell(word: str, chars: Vocabulary, max_word_length: int) -> list[int]:
    """``<s> c1 ... cn </s>`` as character ids, cut or padded (0) to ``max_word_length``."""
    ids = [BOS_ID] + [chars.stoi.get(c, UNK_ID) for c in word] + [EOS_ID]
    ids = ids[:max_word_length]
    return ids + [PAD_ID] * (max_word_length - len(ids))


def spellings(words: list[str], chars: Vocabulary, max_word_length: int) -> torch.Tensor:
    """(len(words), max_word_length) character ids of a vocabulary's words (the decoder's char-CNN table)."""
    return torch.tensor([spell(w, chars, max_word_length) for w in words], dtype=torch.long)


def check_feature_count(parsed: list, n_features: int) -> None:
    """Every training line's words carry ``n_features`` features (the first line's count)."""
    for i, (words, _, feats) in enumerate(parsed):
        if feats and len(feats[0]) != n_features:
            raise DataError(f"training source line {i + 1}: the word {words[0][:60]!r} has {len(feats[0])} features, "
                            f"the first line's words {n_features}")
