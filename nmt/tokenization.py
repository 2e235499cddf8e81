"""Moses tokenization (sacremoses), detokenization and sentence splitting."""

from __future__ import annotations

import functools
import re

from sacremoses import MosesDetokenizer, MosesTokenizer

# Sentence ends at . ! ? (optionally closed by quotes/brackets) before whitespace
# and a capital letter, digit or opening quote. Common abbreviations do not end one.
_SENT_END = re.compile(r"(?<=[.!?…])[\"'»”)\]]*\s+(?=[\"'«„“(\[]?[A-ZÄÖÜÀ-ÞА-Я0-9])")
_ABBREVIATIONS = {"z.B.", "u.a.", "bzw.", "ca.", "Dr.", "Mr.", "Mrs.", "Ms.", "Prof.", "St.", "vs.", "etc.", "e.g.", "i.e.", "Nr.", "M.", "Mme.", "usw."}


class Tokenizer:
    """Case-preserving Moses tokenizer/detokenizer for one language."""

    def __init__(self, lang: str):
        self.lang = lang
        self._tok = MosesTokenizer(lang=lang)
        self._detok = MosesDetokenizer(lang=lang)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.tokenize(text.strip(), escape=False)

    def detokenize(self, tokens: list[str]) -> str:
        return self._detok.detokenize(tokens)


class PretokenizedTokenizer:
    """For text tokenized already (a source of ``word-|-feature`` tokens, ``nmt.inputs``): split at spaces."""

    def __init__(self, lang: str):
        self.lang = lang

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def detokenize(self, tokens: list[str]) -> str:
        return " ".join(tokens)


@functools.lru_cache(maxsize=16)
def get_tokenizer(lang: str, pretokenized: bool = False) -> Tokenizer | PretokenizedTokenizer:
    return PretokenizedTokenizer(lang) if pretokenized else Tokenizer(lang)


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences (one per line already counts as split)."""
    sentences: list[str] = []
    for line in text.splitlines():
        pieces = _SENT_END.split(line.strip())
        merged: list[str] = []
        for piece in pieces:
            last = merged[-1].split()[-1] if merged and merged[-1].split() else ""
            if merged and last in _ABBREVIATIONS:
                merged[-1] = f"{merged[-1]} {piece}"
            else:
                merged.append(piece)
        sentences.extend(p.strip() for p in merged if p.strip())
    return sentences
