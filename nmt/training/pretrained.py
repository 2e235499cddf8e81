"""Pretrained word vectors for the embedding tables (seq2seq-attn's ``pre_word_vecs_enc/dec``).

A vector file is one of:

* a word2vec or GloVe text file: one ``word v1 v2 ... vD`` line per word (word2vec's first line
  ``N D`` is recognised and skipped); vectors of words outside the vocabulary are ignored;
* a ``.safetensors`` file holding one (vocabulary, D) matrix, or a ``.npy`` matrix, its rows in
  the vocabulary's order (``vocab.src.txt`` / ``vocab.tgt.txt`` of a checkpoint or run).

The rows found replace the table's initial rows; the others keep theirs. ``fix_word_vecs_*``
freezes the table (its gradient is never computed).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.errors import DataError
from nmt.vocabulary import PAD_ID, Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Coverage:
    found: int  # vocabulary words that got a vector
    words: int  # vocabulary words (the specials not counted)

    def __str__(self) -> str:
        return f"{self.found:,} of {self.words:,} words ({100 * self.found / max(1, self.words):.1f} %)"


def load_vectors(path: str | Path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab, dim) vectors and a (vocab,) bool mask of the rows the file gave."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such vector file")
    if path.suffix in (".safetensors", ".npy"):
        return _matrix(path, len(vocab), dim)
    return _text(path, vocab, dim)


def _matrix(path: Path, rows: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if path.suffix == ".npy":
        try:
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a .npy matrix ({exc})") from None
    else:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{path}: not a safetensors file ({exc})") from None
        if len(arrays) != 1:
            raise DataError(f"{path}: holds {len(arrays)} arrays; give one (vocabulary, dim) matrix")
        [matrix] = arrays.values()
    if matrix.shape != (rows, dim) or not np.issubdtype(matrix.dtype, np.floating):
        raise DataError(f"{path}: a {matrix.dtype} matrix of shape {tuple(matrix.shape)}; the vocabulary and "
                        f"embedding need ({rows}, {dim}) floats, rows in vocabulary order")
    vectors = torch.from_numpy(np.array(matrix, dtype=np.float32))
    mask = torch.ones(rows, dtype=torch.bool)
    mask[PAD_ID] = False
    return vectors, mask


def _text(path: Path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read line by line (GloVe files are gigabytes; only the vocabulary's rows are kept), plain or .gz."""
    vectors, mask = torch.zeros(len(vocab), dim), torch.zeros(len(vocab), dtype=torch.bool)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="\n") as fh:
            _read_text(fh, path, vocab, vectors, mask)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}) nor a .npy/.safetensors matrix") from None
    return vectors, mask


def _read_text(fh, path: Path, vocab: Vocabulary, vectors: torch.Tensor, mask: torch.Tensor) -> None:
    """Fill ``vectors`` and ``mask`` from ``word v1 ... vD`` lines (the first vector of a word wins)."""
    dim = vectors.size(1)
    for number, line in enumerate(fh, start=1):
        fields = line.rstrip().split(" ")
        if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
            continue  # word2vec's "N D" header
        if len(fields) != dim + 1:
            raise DataError(f"{path} line {number}: {len(fields) - 1} numbers after the word; the embedding "
                            f"size is {dim} (--emb-size)")
        i = vocab.stoi.get(fields[0])
        if i is None or i == PAD_ID or mask[i]:
            continue
        try:
            vectors[i] = torch.tensor([float(x) for x in fields[1:]])
        except ValueError:
            raise DataError(f"{path} line {number}: not a vector of numbers") from None
        mask[i] = True


def apply_vectors(table: torch.nn.Parameter, path: str | Path, vocab: Vocabulary, fix: bool, side: str) -> Coverage:
    """Copy the file's vectors into ``table`` (vocab, dim), say how many words they cover, and freeze
    the table if ``fix``."""
    vectors, mask = load_vectors(path, vocab, table.size(1))
    if not torch.isfinite(vectors[mask]).all():
        raise DataError(f"{path}: holds a vector that is not finite")
    with torch.no_grad():
        table[mask] = vectors[mask].to(table.dtype)
    table.requires_grad_(not fix)
    coverage = Coverage(int(mask[4:].sum()), len(vocab) - 4)
    log.info("%s embeddings from %s: %s%s", side, path, coverage, " (fixed)" if fix else "")
    return coverage
