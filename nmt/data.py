"""Reading parallel text and cutting it into length-bucketed batches."""

from __future__ import annotations

import gzip
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nmt.errors import DataError
from nmt.tokenization import get_tokenizer
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID, Vocabulary

log = logging.getLogger(__name__)


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file, plain or gzipped, without line ends."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    lines: list[str] = []
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}, line {number}: not valid UTF-8 ({exc.reason})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not lines:
        raise DataError(f"{path}: the file is empty")
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Line-aligned source and target sentences; mismatched files are an error."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        short, n = (src_path, len(src)) if len(src) < len(tgt) else (tgt_path, len(tgt))
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
            f"{short} ends after line {n}, so line {n + 1} has no translation"
        )
    return src, tgt


def tokenize_all(lines: list[str], lang: str, pretokenized: bool = False) -> list[list[str]]:
    """Moses tokens of each line, or its space-separated tokens (``pretokenized``: ``nmt.inputs``' inline features)."""
    tok = get_tokenizer(lang, pretokenized)
    return [tok.tokenize(line) for line in lines]


@dataclass
class Batch:
    src: torch.Tensor  # (batch, src_len) token ids, PAD-padded, or (batch, src_len, columns) rows (nmt.inputs)
    src_lengths: torch.Tensor  # (batch,)
    tgt_in: torch.Tensor  # (batch, tgt_len) <s> w1 .. wn
    tgt_out: torch.Tensor  # (batch, tgt_len) w1 .. wn </s>
    index: list[int]  # positions of these examples in the dataset

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src.to(device), self.src_lengths.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.index)

    @property
    def n_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def pad(seqs: list[list[int]] | list[list[list[int]]], value: int = PAD_ID) -> torch.Tensor:
    """(batch, longest) ids, or (batch, longest, columns) for sequences of id rows (characters and
    features: ``nmt.inputs``), padded with ``value``."""
    width = max(len(s) for s in seqs)
    row = next((s[0] for s in seqs if s), 0)
    columns = (len(row),) if isinstance(row, list) else ()
    out = torch.full((len(seqs), width, *columns), value, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    flat = torch.tensor([x for s in seqs for x in s], dtype=torch.long)  # (all tokens[, columns]): one conversion
    out[torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)] = flat  # (row-major: sentence by sentence)
    return out


class ParallelDataset:
    """Token-id pairs, with batching by length."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]]):
        if len(src) != len(tgt):
            raise ValueError("source and target differ in length")
        self.src, self.tgt = src, tgt

    @classmethod
    def from_files(cls, src_path, tgt_path, src_lang: str, tgt_lang: str, src_vocab: Vocabulary,
                   tgt_vocab: Vocabulary, max_len: int = 0) -> "ParallelDataset":
        src_tok, tgt_tok = tokenize_pair_files(src_path, tgt_path, src_lang, tgt_lang, max_len)
        return cls([src_vocab.encode(s) for s in src_tok], [tgt_vocab.encode(t) for t in tgt_tok])

    def __len__(self) -> int:
        return len(self.src)

    def make_batch(self, index: list[int]) -> Batch:
        src = [self.src[i] for i in index]
        tgt = [self.tgt[i] for i in index]
        return Batch(
            src=pad(src),
            src_lengths=torch.tensor([len(s) for s in src], dtype=torch.long),
            tgt_in=pad([[BOS_ID] + t for t in tgt]),
            tgt_out=pad([t + [EOS_ID] for t in tgt]),
            index=list(index),
        )

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, in_order: bool = False) -> Iterator[Batch]:
        """Batches of similar length. ``shuffle``: random buckets and batch order from ``seed``;
        ``in_order``: batches by increasing length (curriculum)."""
        for chunk in self.batch_indices(batch_size, shuffle, seed, in_order):
            yield self.make_batch(chunk)

    def batch_indices(self, batch_size: int, shuffle: bool = True, seed: int = 0, in_order: bool = False) -> list[list[int]]:
        """The examples of each of ``batches``' batches, in its order."""
        return length_batches([len(s) for s in self.src], [len(t) for t in self.tgt], batch_size, shuffle, seed,
                              in_order)


def length_batches(src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                   seed: int = 0, in_order: bool = False) -> list[list[int]]:
    """``ParallelDataset.batch_indices`` of pairs of these lengths: any dataset with the same lengths
    (``nmt.preprocess.ShardedDataset``) gets the same batches for a seed."""
    rng = random.Random(seed)
    order = list(range(len(src_lengths)))
    if shuffle and not in_order:
        rng.shuffle(order)  # random tie-breaking between equal lengths
    order.sort(key=lambda i: (src_lengths[i], tgt_lengths[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and not in_order:
        rng.shuffle(chunks)
    return chunks


def shard(index: list[int], rank: int, world_size: int) -> list[int]:
    """Process ``rank``'s contiguous slice of one global batch split over ``world_size`` processes:
    sizes differ by at most one, the first slices are the larger; a batch of fewer examples than
    processes leaves the last slices empty. The slices, in rank order, are the batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not between 0 and {world_size - 1}")
    size, extra = divmod(len(index), world_size)
    start = rank * size + min(rank, extra)
    return index[start : start + size + (rank < extra)]


def check_features(sentences: list[list[str]], path: str) -> int:
    """The number of inline features every word of ``sentences`` carries (``nmt.inputs.split_features``)."""
    from nmt.inputs import split_features

    count = None
    for i, tokens in enumerate(sentences):
        _, feats = split_features(tokens, f"{path} line {i + 1}")
        if feats and count is not None and len(feats[0]) != count:
            raise DataError(f"{path} line {i + 1}: the word {tokens[0][:60]!r} has {len(feats[0])} features, "
                            f"the words of the lines before {count}")
        count = len(feats[0]) if feats and count is None else count
    return count or 0


def tokenize_pair_files(src_path, tgt_path, src_lang: str, tgt_lang: str, max_len: int = 0,
                        src_features: str = ""):
    """Tokenized pairs; empty pairs and (with ``max_len``) over-long pairs are dropped and counted.
    With inline source features (``nmt.inputs``) the source is split at spaces, and every word of
    the file must carry as many features as the first (an error naming the line and word)."""
    src_tok, tgt_tok, keep = tokenize_pairs(src_path, tgt_path, src_lang, tgt_lang, max_len, src_features)
    return [src_tok[i] for i in keep], [tgt_tok[i] for i in keep]


def tokenize_pairs(src_path, tgt_path, src_lang: str, tgt_lang: str, max_len: int = 0, src_features: str = ""):
    """``tokenize_pair_files`` before the drop: every line's tokens, and the lines kept (what line-aligned
    side files, such as word alignments, need)."""
    src_lines, tgt_lines = read_parallel(src_path, tgt_path)
    inline = src_features == "inline"
    src_tok, tgt_tok = tokenize_all(src_lines, src_lang, inline), tokenize_all(tgt_lines, tgt_lang)
    if inline:
        check_features(src_tok, str(src_path))
    keep, empty, long = pairs_kept(src_tok, tgt_tok, max_len)
    report_dropped(src_path, len(keep), empty, long, max_len)
    return src_tok, tgt_tok, keep


def pairs_kept(src_tok: list[list[str]], tgt_tok: list[list[str]], max_len: int = 0) -> tuple[list[int], int, int]:
    """The positions of the pairs training keeps, and how many were dropped as empty (a side without
    tokens) and as too long (a side over ``max_len`` tokens; 0: no limit). Works on any slice of a
    file (``nmt.preprocess`` tokenizes chunks in parallel and adds up the counts)."""
    keep = [i for i in range(len(src_tok)) if src_tok[i] and tgt_tok[i]]
    empty = len(src_tok) - len(keep)
    if max_len:
        kept = [i for i in keep if len(src_tok[i]) <= max_len and len(tgt_tok[i]) <= max_len]
        long, keep = len(keep) - len(kept), kept
    else:
        long = 0
    return keep, empty, long


def report_dropped(src_path, kept: int, empty: int, long: int, max_len: int) -> None:
    """Log the dropped pairs of a file; none kept is an error."""
    if empty or long:
        log.warning("%s: dropped %d empty and %d pairs longer than %d tokens (kept %d of %d)",
                    src_path, empty, long, max_len, kept, kept + empty + long)
    if not kept:
        raise DataError(f"{src_path}: no sentence pair left after dropping empty/long ones")
