"""Word vocabularies with the seq2seq-attn specials at indices 0-3."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

PAD, UNK, BOS, EOS = "<blank>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocabulary:
    """A list of words; ``<blank>``, ``<unk>``, ``<s>``, ``</s>`` come first."""

    def __init__(self, words: Iterable[str]):
        words = list(words)
        if tuple(words[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}
        if len(self.stoi) != len(words):
            raise ValueError("a vocabulary holds a word twice")

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int, min_freq: int = 1) -> "Vocabulary":
        """The ``max_size`` most frequent words seen at least ``min_freq`` times (ties: alphabetical)."""
        counts = Counter(w for sent in sentences for w in sent)
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked[: max(0, max_size - len(SPECIALS))])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        # (only "\n" ends a line: splitlines() would also cut at U+2028 and shift the indices)
        return cls(Path(path).read_text(encoding="utf-8").removesuffix("\n").split("\n"))
