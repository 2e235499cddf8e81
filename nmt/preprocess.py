"""``python -m nmt preprocess``: tokenize and index a training corpus once (seq2seq-attn's
``preprocess.py``, with its ``num_shards``), for training runs that then skip Moses tokenization.

The folder it writes holds:

* ``src.vocab``, ``tgt.vocab``: the vocabularies (``Vocabulary.save``'s format, one word a line);
* ``shard-00000.safetensors``, ...: consecutive runs of the kept pairs, each with int32 ``src`` and
  ``tgt`` (every pair's token ids, concatenated) and int64 ``src_offsets`` / ``tgt_offsets``
  (``pairs + 1`` each: pair ``i``'s ids are ``src[src_offsets[i]:src_offsets[i + 1]]``);
* ``preprocess.json``: the format version, the languages, the input files (sha256, lines), the
  settings, the pair count and what was dropped, the vocabularies' sizes and sha256, and the shards
  (file, pairs, tokens, sha256).

The pairs are those ``nmt.data.tokenize_pair_files`` keeps (the same tokenizer, the same dropping of
empty and over-long pairs), indexed as training indexes them, so ``ShardedDataset`` gives the very
batches ``ParallelDataset`` gives for a seed. Only plain word inputs: character and feature inputs
need the tokens, which are not stored.

The folder is written to a temporary sibling and renamed into place (``nmt.checkpoint.atomic_dir``):
an interrupted run leaves no folder that looks complete. An existing ``--out`` is refused, unless
``overwrite`` is given and it is a preprocessed folder (or empty); it is then replaced atomically.

``ShardedDataset.open`` treats the folder as untrusted: preprocess.json is size-capped and checked
field by field, it may name only shard files inside the folder, every shard's safetensors header is
checked (size, names, dtypes, extents within the file) before anything is mapped, its sha256 must be
preprocess.json's, its offsets must start at 0 and grow by 1 to ``max_len`` per pair up to the end of
the ids, and its ids must be within the vocabulary. Only the per-pair lengths are kept in memory; a
batch's ids are read from the memory-mapped shards (the files must not change while open).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import mmap
import multiprocessing
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from nmt.checkpoint import MAX_HEADER_BYTES, MAX_VOCAB_BYTES, atomic_dir, file_sha256
from nmt.config import ModelConfig, VocabConfig
from nmt.data import Batch, length_batches, pairs_kept, read_parallel, report_dropped, tokenize_all
from nmt.errors import CheckpointError, DataError
from nmt.safe_io import MIB, checkpoint_file, decode_lines, read_capped
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID, Vocabulary

log = logging.getLogger(__name__)
FORMAT, FORMAT_VERSION = "nmt-preprocess", 1
MANIFEST, SRC_VOCAB, TGT_VOCAB = "preprocess.json", "src.vocab", "tgt.vocab"
SHARD_NAME, SHARD_PATTERN = "shard-{:05d}.safetensors", re.compile(r"shard-\d{5,9}\.safetensors")
TENSORS = {"src": "I32", "tgt": "I32", "src_offsets": "I64", "tgt_offsets": "I64"}
ITEM_BYTES = {"I32": 4, "I64": 8}
DEFAULT_SHARD_SIZE = 1_000_000  # pairs a shard (without --shards / --shard-size)
CHUNK_LINES = 2_000  # lines a tokenizing job: small enough to balance the workers, large enough to amortize pickling
MAX_MANIFEST_BYTES, MAX_SHARDS = 16 * MIB, 100_000
CHECK_BLOCK = 1 << 22  # ids checked at a time when a shard is opened (16 MiB of int32)


# ---- writing ----------------------------------------------------------------------------
def preprocess(train_src, train_tgt, out, src_lang: str = "de", tgt_lang: str = "en", max_len: int = 50,
               vocab: VocabConfig | None = None, shards: int = 0, shard_size: int = 0, workers: int = 0,
               overwrite: bool = False, chunk_lines: int = CHUNK_LINES) -> dict:
    """Tokenize ``train_src``/``train_tgt`` over ``workers`` processes (0: one per core), build the
    vocabularies and write the folder ``out``; returns its preprocess.json. ``shards`` (a count) or
    ``shard_size`` (pairs a shard) choose the sharding; neither: shards of DEFAULT_SHARD_SIZE pairs."""
    vocab = vocab or VocabConfig()
    out = Path(out)
    _check_settings(max_len, shards, shard_size, workers, chunk_lines)
    check_output(out, overwrite, (train_src, train_tgt))
    src_lines, tgt_lines = read_parallel(train_src, train_tgt)
    files = {"src": _file_record(train_src, len(src_lines)), "tgt": _file_record(train_tgt, len(tgt_lines))}
    src_tok, tgt_tok, empty, long = tokenize_parallel(src_lines, tgt_lines, src_lang, tgt_lang, max_len,
                                                      workers, chunk_lines)
    del src_lines, tgt_lines
    report_dropped(train_src, len(src_tok), empty, long, max_len)
    vocabs = _vocabularies(src_tok, tgt_tok, vocab)
    bounds = shard_bounds(len(src_tok), shards, shard_size)
    settings = {"max_len": max_len, **dataclasses.asdict(vocab), "shards": len(bounds)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "src_lang": src_lang, "tgt_lang": tgt_lang,
                "files": files, "settings": settings, "pairs": len(src_tok), "dropped": {"empty": empty, "long": long}}
    try:
        with atomic_dir(out) as tmp:
            manifest["vocabularies"] = {"src": _write_vocab(tmp / SRC_VOCAB, vocabs.src_vocab),
                                        "tgt": _write_vocab(tmp / TGT_VOCAB, vocabs.tgt_vocab)}
            manifest["shards"] = [write_shard(tmp / SHARD_NAME.format(k), src_tok[a:b], tgt_tok[a:b], vocabs)
                                  for k, (a, b) in enumerate(bounds)]
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except CheckpointError as exc:  # (atomic_dir's message speaks of checkpoints)
        cause = exc.__context__
        raise DataError(f"cannot write {out} ({getattr(cause, 'strerror', None) or cause}); free some space or "
                        "choose a writable --out. The folder there before, if any, is kept.") from None
    log.info("wrote %d pairs in %d shards to %s", len(src_tok), len(bounds), out)
    return manifest


def _check_settings(max_len: int, shards: int, shard_size: int, workers: int, chunk_lines: int) -> None:
    for name, value in (("--max-len", max_len), ("--shards", shards), ("--shard-size", shard_size),
                        ("--workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{name} must be a whole number, at least 0 (got {value!r})")
    if shards and shard_size:
        raise DataError("give --shards (how many) or --shard-size (pairs a shard), not both")
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be at least 1")


def check_output(out: Path, overwrite: bool, inputs=()) -> None:
    """Refuse an ``out`` that exists, unless ``overwrite`` and it is a preprocessed (or an empty) folder:
    a mistyped --out never deletes someone's folder; nor one that holds the ``inputs``."""
    if not out.exists() and not out.is_symlink():
        return
    inside = [str(f) for f in inputs if out.resolve() in Path(f).resolve().parents]
    if inside:
        raise DataError(f"{out}: holds the input {inside[0]}, which replacing the folder would delete; choose "
                        "another --out")
    if not out.is_dir() or out.is_symlink():  # (a link would be replaced, not the folder it names)
        raise DataError(f"{out}: exists and is not a folder (or is a link); choose another --out")
    if not overwrite and any(out.iterdir()):
        raise DataError(f"{out}: exists already; give --overwrite to replace it, or choose another --out")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"{out}: exists and is not a preprocessed folder (no {MANIFEST}); --overwrite replaces "
                        "only those: choose another --out")


def _file_record(path, lines: int) -> dict:
    return {"path": str(path), "sha256": file_sha256(Path(path)), "lines": lines}


def tokenize_parallel(src_lines: list[str], tgt_lines: list[str], src_lang: str, tgt_lang: str, max_len: int = 0,
                      workers: int = 0, chunk_lines: int = CHUNK_LINES):
    """The kept pairs' tokens (``tokenize_pair_files``'s rules), and the numbers dropped as empty and as
    too long. Chunks of lines are tokenized by ``workers`` processes (sacremoses is pure Python: threads
    would share one interpreter lock), their results taken in order."""
    jobs = [(src_lines[a:a + chunk_lines], tgt_lines[a:a + chunk_lines], src_lang, tgt_lang, max_len)
            for a in range(0, len(src_lines), chunk_lines)]
    workers = min(workers or _cores(), len(jobs))
    if workers <= 1:
        results = list(map(tokenize_chunk, jobs))
    else:
        with _context().Pool(workers) as pool:
            results = pool.map(tokenize_chunk, jobs, chunksize=1)
    src_tok = [s for r in results for s in r[0]]
    tgt_tok = [t for r in results for t in r[1]]
    return src_tok, tgt_tok, sum(r[2] for r in results), sum(r[3] for r in results)


def tokenize_chunk(job: tuple) -> tuple[list[list[str]], list[list[str]], int, int]:
    """One job of ``tokenize_parallel`` (run in a worker): the kept pairs' tokens, the dropped counts."""
    src_lines, tgt_lines, src_lang, tgt_lang, max_len = job
    src_tok, tgt_tok = tokenize_all(src_lines, src_lang), tokenize_all(tgt_lines, tgt_lang)
    keep, empty, long = pairs_kept(src_tok, tgt_tok, max_len)
    return [src_tok[i] for i in keep], [tgt_tok[i] for i in keep], empty, long


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _context():
    """fork where there is one: the workers start at once, with this process's modules and tokenizers
    (they run only sacremoses, never torch, so torch's threads in the parent do not matter)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _vocabularies(src_tok, tgt_tok, vocab: VocabConfig):
    # (imported here: nmt.training's package imports the trainer, which may import this module)
    from nmt.training.corpus import build_vocabularies

    return build_vocabularies(src_tok, tgt_tok, ModelConfig(), vocab)


def shard_bounds(pairs: int, shards: int = 0, shard_size: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` of each shard, of sizes differing by at most one (the first the larger): ``shards``
    of them, or as few as hold at most ``shard_size`` pairs each (neither: DEFAULT_SHARD_SIZE)."""
    if shards > pairs:
        raise DataError(f"--shards {shards} is more than the {pairs:,} pairs kept (a shard holds at least one)")
    if not shards:
        shards = -(-pairs // (shard_size or DEFAULT_SHARD_SIZE))
    size, extra = divmod(pairs, shards)
    starts = [k * size + min(k, extra) for k in range(shards + 1)]
    return list(itertools.pairwise(starts))


def write_shard(path: Path, src_tok: list[list[str]], tgt_tok: list[list[str]], vocabs) -> dict:
    """One shard file of these pairs; its preprocess.json record."""
    src, src_offsets = encode_flat(src_tok, vocabs.src_vocab)
    tgt, tgt_offsets = encode_flat(tgt_tok, vocabs.tgt_vocab)
    save_file({"src": src, "tgt": tgt, "src_offsets": src_offsets, "tgt_offsets": tgt_offsets}, str(path),
              metadata={"format": FORMAT})
    return {"file": path.name, "pairs": len(src_tok), "src_tokens": len(src), "tgt_tokens": len(tgt),
            "sha256": file_sha256(path)}


def encode_flat(sentences: list[list[str]], vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """The ids of all sentences, concatenated: (tokens,) int32, and where each starts: (n + 1,) int64."""
    offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)), out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(map(vocab.encode, sentences)), dtype=np.int32,
                      count=int(offsets[-1]))
    return ids, offsets


def _write_vocab(path: Path, vocab: Vocabulary) -> dict:
    vocab.save(path)
    return {"file": path.name, "size": len(vocab), "sha256": file_sha256(path)}


# ---- reading ----------------------------------------------------------------------------
@dataclass
class _Shard:
    path: Path
    ids: dict[str, np.ndarray]  # "src"/"tgt" -> (tokens,) int32, views of the mapped file: pages read when needed
    offsets: dict[str, np.ndarray]  # "src"/"tgt" -> (pairs + 1,) int64, likewise


class ShardedDataset:
    """The pairs of a preprocessed folder, with ``ParallelDataset``'s interface (``len``, ``make_batch``,
    ``batch_indices``, ``batches``) and its batches; also the folder's vocabularies, languages and settings."""

    def __init__(self, folder: Path, manifest: dict, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
                 shards: list[_Shard], src_lengths: np.ndarray, tgt_lengths: np.ndarray):
        self.folder, self.manifest, self.src_vocab, self.tgt_vocab = folder, manifest, src_vocab, tgt_vocab
        self._shards = shards
        self.src_lengths, self.tgt_lengths = src_lengths, tgt_lengths  # (pairs,) int32 each: all that is in memory
        sizes = [s["pairs"] for s in manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (shards + 1,) first pair of each

    @classmethod
    def open(cls, folder: str | Path) -> ShardedDataset:
        """The folder ``python -m nmt preprocess`` wrote, checked (see the module's notes); a DataError
        naming the file and the problem for anything amiss."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        vocabs = manifest["vocabularies"]
        src_vocab = _read_vocab(folder, SRC_VOCAB, vocabs["src"])
        tgt_vocab = _read_vocab(folder, TGT_VOCAB, vocabs["tgt"])
        sizes, max_len = (len(src_vocab), len(tgt_vocab)), manifest["settings"]["max_len"]
        opened = [open_shard(folder, record, sizes, max_len) for record in manifest["shards"]]
        return cls(folder, manifest, src_vocab, tgt_vocab, [o[0] for o in opened],
                   np.concatenate([o[1] for o in opened]), np.concatenate([o[2] for o in opened]))

    @property
    def src_lang(self) -> str:
        return self.manifest["src_lang"]

    @property
    def tgt_lang(self) -> str:
        return self.manifest["tgt_lang"]

    @property
    def settings(self) -> dict:
        """max_len, the VocabConfig fields and the shard count the folder was written with."""
        return self.manifest["settings"]

    def vocabularies(self, m: ModelConfig):
        """The vocabularies in ``build_vocabularies``' shape, their sizes set in ``m`` (word inputs only)."""
        from nmt.training.corpus import Vocabularies  # (see _vocabularies)

        if m.src_features or m.use_chars_enc or m.use_chars_dec:
            raise DataError(f"{self.folder}: a preprocessed folder holds word ids only; character or feature "
                            "inputs need the raw files (--train-src/--train-tgt)")
        m.src_vocab, m.tgt_vocab, m.char_vocab, m.feature_vocabs = len(self.src_vocab), len(self.tgt_vocab), 0, ()
        return Vocabularies(self.src_vocab, self.tgt_vocab, None, [], m)

    def __len__(self) -> int:
        return len(self.src_lengths)

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        """The source and target ids of pair ``i``."""
        idx = np.array([i], dtype=np.int64)
        self._check_index(idx)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        return (self._gather("src", idx, shard_of, self.src_lengths[idx].astype(np.int64)).tolist(),
                self._gather("tgt", idx, shard_of, self.tgt_lengths[idx].astype(np.int64)).tolist())

    def batch_indices(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                      in_order: bool = False) -> list[list[int]]:
        """``ParallelDataset.batch_indices`` (the same function of the same lengths: the same batches)."""
        return length_batches(self.src_lengths.tolist(), self.tgt_lengths.tolist(), batch_size, shuffle, seed,
                              in_order)

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                in_order: bool = False) -> Iterator[Batch]:
        for chunk in self.batch_indices(batch_size, shuffle, seed, in_order):
            yield self.make_batch(chunk)

    def make_batch(self, index: list[int]) -> Batch:
        """``ParallelDataset.make_batch``'s tensors for these pairs, read from the mapped shards."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)  # (batch,)
        if not len(idx):
            raise ValueError("a batch needs at least one pair")
        self._check_index(idx)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1  # (batch,)
        src_len, tgt_len = self.src_lengths[idx].astype(np.int64), self.tgt_lengths[idx].astype(np.int64)  # (batch,)
        src = self._gather("src", idx, shard_of, src_len)  # (source tokens,)
        tgt = self._gather("tgt", idx, shard_of, tgt_len)  # (target tokens,)
        rows = np.arange(len(idx))
        tgt_in = _padded(tgt, tgt_len, int(tgt_len.max()) + 1, shift=1)  # (batch, width): <s> w1 .. wn
        tgt_in[:, 0] = BOS_ID
        tgt_out = _padded(tgt, tgt_len, int(tgt_len.max()) + 1)  # (batch, width): w1 .. wn </s>
        tgt_out[rows, tgt_len] = EOS_ID
        return Batch(src=torch.from_numpy(_padded(src, src_len, int(src_len.max()))),
                     src_lengths=torch.from_numpy(src_len), tgt_in=torch.from_numpy(tgt_in),
                     tgt_out=torch.from_numpy(tgt_out), index=list(index))

    def _check_index(self, idx: np.ndarray) -> None:
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"pair index out of range (the dataset has {len(self)} pairs)")

    def _gather(self, side: str, idx: np.ndarray, shard_of: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The ids of pairs ``idx`` (in shards ``shard_of``) on one side, concatenated in ``idx``'s order:
        (sum(lengths),) int32. One fancy index a shard the batch touches (numpy reads only those pages)."""
        if len(self._shards) == 1:
            return self._shards[0].ids[side][_ranges(self._shards[0].offsets[side][idx], lengths)]
        first = np.empty(len(idx), dtype=np.int64)  # (batch,) where each pair's ids start in its shard
        for s in np.unique(shard_of).tolist():
            sel = shard_of == s
            first[sel] = self._shards[s].offsets[side][idx[sel] - self._starts[s]]
        positions, token_shard = _ranges(first, lengths), np.repeat(shard_of, lengths)  # (tokens,) each
        out = np.empty(len(positions), dtype=np.int32)
        for s in np.unique(shard_of).tolist():
            sel = token_shard == s
            out[sel] = self._shards[s].ids[side][positions[sel]]
        return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``starts[0] .. starts[0] + lengths[0] - 1``, then the next pair's...: (sum(lengths),) int64 positions."""
    ends = np.cumsum(lengths)  # (batch,)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]))


def _padded(flat: np.ndarray, lengths: np.ndarray, width: int, shift: int = 0) -> np.ndarray:
    """(batch, width) int64: each row's ids (taken in turn from ``flat``) from column ``shift`` on, PAD after."""
    out = np.full((len(lengths), width), PAD_ID, dtype=np.int64)
    mask = np.arange(width - shift)[None, :] < lengths[:, None]  # (batch, width - shift)
    out[:, shift:][mask] = flat  # (row-major: pair by pair, as flat is)
    return out


# ---- checking an untrusted folder ---------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    """preprocess.json, size-capped and checked field by field."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (write one with python -m nmt preprocess)")
    path = folder_file(folder, MANIFEST, "settings file")
    if not path.is_file():
        raise DataError(f"{folder}: not a preprocessed folder (no {MANIFEST}; write one with python -m nmt "
                        "preprocess)")
    data = read_capped(path, MAX_MANIFEST_BYTES, MANIFEST, DataError)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # (the message names a position, never the content)
        reason = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 or too deep"
        raise DataError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not written by python -m nmt preprocess (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise DataError(f"{path}: format version {str(version)[:20]} is not supported (this nmt reads versions "
                        f"up to {FORMAT_VERSION}); preprocess the corpus again")
    _check_fields(manifest, path)
    return manifest


def _check_fields(m: dict, path: Path) -> None:
    for key in ("src_lang", "tgt_lang"):
        value = m.get(key)
        if not isinstance(value, str) or not value.isascii() or not value.isalpha() or len(value) > 8:
            raise DataError(f"{path}: {key!r} must be a language code such as 'de'")
    _count(m.get("settings"), "max_len", f"{path}: settings")
    pairs = _count(m, "pairs", str(path), 1)
    vocabularies = m.get("vocabularies") if isinstance(m.get("vocabularies"), dict) else {}
    for side in ("src", "tgt"):
        record = vocabularies.get(side)
        _count(record, "size", f"{path}: vocabularies.{side}", 4)
        _digest(record, f"{path}: vocabularies.{side}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise DataError(f"{path}: 'shards' must list 1 to {MAX_SHARDS:,} shards")
    for k, record in enumerate(shards):
        where = f"{path}: shards[{k}]"
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise DataError(f"{where} must name its file")
        for key in ("pairs", "src_tokens", "tgt_tokens"):
            _count(record, key, where, 1)
        _digest(record, where)
    if len({s["file"] for s in shards}) != len(shards) or sum(s["pairs"] for s in shards) != pairs:
        raise DataError(f"{path}: the shards (each named once) must hold the {pairs:,} pairs it records")


def _count(record, key: str, where: str, minimum: int = 0) -> int:
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{where}: {key!r} must be a whole number, at least {minimum}")
    return value


def _digest(record, where: str) -> str:
    value = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DataError(f"{where}: 'sha256' must be 64 hexadecimal digits")
    return value


def folder_file(folder: Path, name: str, what: str) -> Path:
    """``folder/name``, a file inside ``folder`` (also after following links), else a DataError."""
    try:
        return checkpoint_file(folder, name, what)
    except CheckpointError:
        raise DataError(f"{folder / MANIFEST}: the {what} {name[:60]!r} is not a file inside {folder} (a "
                        "preprocessed folder refers only to its own files)") from None


def _read_vocab(folder: Path, name: str, record: dict) -> Vocabulary:
    path = folder_file(folder, name, "vocabulary")
    data = read_capped(path, MAX_VOCAB_BYTES, "vocabulary", DataError)
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(f"{path}: not the vocabulary {MANIFEST} records (its sha256 differs): the folder was "
                        "changed or damaged; preprocess the corpus again")
    try:
        vocab = Vocabulary(decode_lines(data, str(path)))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    if len(vocab) != record["size"]:
        raise DataError(f"{path}: {len(vocab):,} words, but {MANIFEST} records {record['size']:,}")
    return vocab


def open_shard(folder: Path, record: dict, vocab_sizes: tuple[int, int], max_len: int):
    """One shard, checked: its mapped arrays, and its pairs' source and target lengths ((pairs,) int32 each).
    Everything is read through one open file, so a shard replaced meanwhile is never half checked."""
    path = folder_file(folder, record["file"], "shard")
    if not SHARD_PATTERN.fullmatch(record["file"]):
        raise DataError(f"{folder / MANIFEST}: the shard file {record['file'][:60]!r} is not a shard name "
                        "(shard-NNNNN.safetensors)")
    if not path.is_file():  # (before opening: a FIFO would block)
        raise DataError(f"{path}: the shard is missing or not a regular file")
    try:
        with open(path, "rb") as fh:
            start, extents = shard_header(path, fh, record)
            if _sha256(fh) != record["sha256"]:
                raise DataError(f"{path}: not the shard {MANIFEST} records (its sha256 differs): the folder was "
                                "changed or damaged; preprocess the corpus again")
            lengths = [_check_side(path, fh, start, extents, side, size, max_len)
                       for side, size in zip(("src", "tgt"), vocab_sizes)]
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # (stays valid once the file is closed)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the shard ({exc.strerror or exc})") from None
    views = {name: _mapped(mapping, start, extents[name], "<i4" if TENSORS[name] == "I32" else "<i8")
             for name in TENSORS}
    shard = _Shard(path, {side: views[side] for side in ("src", "tgt")},
                   {side: views[f"{side}_offsets"] for side in ("src", "tgt")})
    return shard, lengths[0], lengths[1]


def shard_header(path: Path, fh, record: dict) -> tuple[int, dict[str, tuple[int, int]]]:
    """Where the data of the open shard ``fh`` starts, and each tensor's (first byte, elements) within it: the
    header's size, names, dtypes, shapes and extents checked (against the file's size and ``record``) before
    anything else is read."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 0 < n <= MAX_HEADER_BYTES or 8 + n > size:
        raise DataError(f"{path}: not a shard (a safetensors header is missing, over "
                        f"{MAX_HEADER_BYTES // MIB} MiB or cut off)")
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (ValueError, RecursionError):
        raise DataError(f"{path}: not a shard (its safetensors header is not valid JSON)") from None
    if not isinstance(header, dict) or set(header) - {"__metadata__"} != set(TENSORS):
        raise DataError(f"{path}: a shard holds exactly the tensors {', '.join(TENSORS)}")
    extents = {name: _extent(path, name, header[name], size - 8 - n) for name in TENSORS}
    for side in ("src", "tgt"):
        expected = {f"{side}_offsets": record["pairs"] + 1, side: record[f"{side}_tokens"]}
        if any(extents[name][1] != count for name, count in expected.items()):
            raise DataError(f"{path}: its {side} arrays are not of the {record['pairs']:,} pairs and "
                            f"{record[f'{side}_tokens']:,} tokens {MANIFEST} records")
    try:
        with safe_open(str(path), framework="numpy"):  # (safetensors' own checks: no gaps, no overlaps)
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None
    return 8 + n, extents


def _extent(path: Path, name: str, entry, data_size: int) -> tuple[int, int]:
    """(first byte, elements) of one tensor's header entry, inside the file's ``data_size`` bytes of data."""
    dtype = TENSORS[name]
    entry = entry if isinstance(entry, dict) else {}
    shape, span = entry.get("shape"), entry.get("data_offsets")
    if entry.get("dtype") != dtype or not _numbers(shape, 1) or not _numbers(span, 2):
        raise DataError(f"{path}: {name} must be a vector of {dtype} (its header entry is not)")
    (count,), (begin, end) = shape, span
    if end > data_size:
        raise DataError(f"{path}: cut off: {name} ends at byte {end:,} of the data, which has {data_size:,} "
                        "(a truncated file?)")
    if end - begin != count * ITEM_BYTES[dtype]:
        raise DataError(f"{path}: {name}'s {count:,} elements do not fill bytes {begin:,}-{end:,}")
    return begin, count


def _numbers(value, n: int) -> bool:
    """``value`` is a list of ``n`` whole numbers, none negative."""
    return isinstance(value, list) and len(value) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)


def _sha256(fh) -> str:
    fh.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _read(fh, offset: int, dtype: str, count: int) -> np.ndarray:
    """(count,) elements at byte ``offset`` of the open file (read, not mapped: nothing stays resident)."""
    fh.seek(offset)
    data = fh.read(count * np.dtype(dtype).itemsize)
    if len(data) != count * np.dtype(dtype).itemsize:
        raise DataError(f"{fh.name}: cut off while it was read (changed meanwhile?)")
    return np.frombuffer(data, dtype=dtype)


def _check_side(path: Path, fh, start: int, extents: dict, side: str, vocab_size: int, max_len: int) -> np.ndarray:
    """Each pair's length on one side ((pairs,) int32) from its offsets, which must start at 0, grow by 1 to
    ``max_len`` (0: no limit) a pair and end at the end of the ids; every id must be within the vocabulary."""
    begin, count = extents[f"{side}_offsets"]
    offsets = _read(fh, start + begin, "<i8", count)  # (pairs + 1,)
    lengths = np.diff(offsets)  # (pairs,)
    if offsets[0] != 0 or offsets[-1] != extents[side][1] or lengths.min() < 1 or (max_len and lengths.max() > max_len):
        limit = f"1 to {max_len}" if max_len else "at least 1"
        raise DataError(f"{path}: {side}_offsets is damaged: it must start at 0, end at the {extents[side][1]:,} "
                        f"ids and grow by {limit} a pair (the folder's max_len)")
    begin, count = extents[side]
    for first in range(0, count, CHECK_BLOCK):  # (a block at a time: bounded memory)
        block = _read(fh, start + begin + 4 * first, "<i4", min(CHECK_BLOCK, count - first))
        if block.min() < 0 or block.max() >= vocab_size:
            raise DataError(f"{path}: {side} holds ids outside its vocabulary of {vocab_size:,} words (0 to "
                            f"{vocab_size - 1:,}): the shard does not belong to these vocabularies")
    return lengths.astype(np.int32)


def _mapped(mapping: mmap.mmap, start: int, extent: tuple[int, int], dtype: str) -> np.ndarray:
    """A read-only view of one tensor of the mapped file (a plain ndarray: np.memmap's subclass hooks cost
    more than the gathering itself)."""
    begin, count = extent
    return np.frombuffer(mapping, dtype=dtype, count=count, offset=start + begin)
