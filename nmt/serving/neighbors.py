"""Nearest training examples: the "nearest training states" of Seq2Seq-Vis (Strobelt et al. 2018).

``python -m nmt index`` runs the model teacher-forced over its training pairs and stores, inside the
checkpoint folder, an index of two kinds of hidden state:

- side ``"target"``: the decoder's attentional output h~_t (the vector the generator reads), one per
  target token: the state that predicted it (the last state, which predicts ``</s>``, is not indexed);
- side ``"source"``: the encoder's memory h_s, one per source token.

:func:`find_neighbors` takes one such state of a new sentence (the decoder's while it produced an
output word, or the encoder's of a source word) and returns the training positions nearest to it in
Euclidean distance, with their sentences, so that one can see what the model learnt that state from.

How (chosen by measurement, BENCHMARKS.md "Nearest training examples"): the states are compressed by
an OPQ rotation and a product quantizer (FAISS: 16 bytes a target state, 8 a source state, where fp32
takes 1 KiB); a query takes the quantized index's best candidates, recomputes their sentences' states
exactly with the model (the training text is stored anyway, to show it) and ranks them by their exact
distance. The distances returned are exact; only a neighbour missed by the candidates is lost.

The files (``nmt.hub.INDEX_FILES``, all optional parts of a checkpoint): ``index.json`` (settings, sizes
and the SHA-256 of the other files and of the weights indexed), ``index.safetensors`` (plain arrays: for
each side a rotation and the quantizer's centroids as fp16, the codes as uint8, the number of positions
of each sentence) and ``index.src.txt.gz``/``index.tgt.txt.gz`` (the training sentences, one per line,
gzipped). Like the rest of a
checkpoint they are untrusted: no FAISS file is ever read (its reader is not hardened); the arrays are
size-checked, their header checked against ``index.json`` and the model before anything is read, and
the FAISS index is rebuilt in memory from them. Errors never echo what the files hold.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import logging
import math
import numbers
import os
import random
import struct
import threading
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.checkpoint import (
    MAX_INDEX_ARRAYS_BYTES,
    MAX_INDEX_CONFIG_BYTES,
    MAX_INDEX_TEXT_BYTES,
    WEIGHTS,
    file_sha256,
)
from nmt.data import pad
from nmt.errors import CheckpointError, DataError, NMTError
from nmt.hub import INDEX_ARRAYS, INDEX_CONFIG, INDEX_SOURCES, INDEX_TARGETS
from nmt.safe_io import MIB, atomic_output, checkpoint_file, decode_lines, read_capped
from nmt.serving.extraction import decode_steps, id_states
from nmt.vocabulary import BOS_ID

log = logging.getLogger(__name__)

SIDES = ("target", "source")
MAX_K = 100
INDEX_FORMAT = 1
MAX_POSITIONS = 1000  # a sentence's tokens; longer training pairs are not indexed
MAX_LINE_CHARS = 20_000  # a stored training sentence
MAX_HEADER_BYTES = 64 * 1024
MAX_CANDIDATES = 4096
TOKEN_CACHE = 8192  # sentences whose tokens a loaded index keeps (a few MB)
NO_INDEX = ("this model has no nearest-neighbour index: build one with "
            "python -m nmt index --model DIR --src TRAIN.SRC --tgt TRAIN.TGT")


@dataclass
class Neighbor:
    """A training position near the query: its sentence pair (raw text) and where in it."""

    source: str
    target: str
    tokens: list[str]  # the pair's tokenized target for side "target", its tokenized source for "source"
    position: int  # the matching position in ``tokens``
    distance: float  # Euclidean distance between the two states (exact, recomputed)
    sentence: int  # the pair's line in the indexed training files (0-based, empty pairs skipped)


@dataclass(frozen=True)
class IndexSettings:
    """How ``python -m nmt index`` compresses each side: an OPQ rotation to a multiple of
    ``*_subquantizers`` dimensions, then that many sub-quantizers of ``bits`` bits each; a query
    re-ranks ``*_candidates`` candidates exactly."""

    target_subquantizers: int = 16
    source_subquantizers: int = 8
    target_candidates: int = 64
    source_candidates: int = 256
    bits: int = 8
    train_positions: int = 40_000  # states sampled (per side) to train the rotation and the quantizer
    opq_iterations: int = 25
    batch_size: int = 64
    seed: int = 0


# ----------------------------------------------------------------------------- states
def sentence_states(model, device, src_ids: list[list[int]], tgt_ids: list[list[int]] | None):
    """Teacher-forced states of a batch: the encoder's memory (batch, src_len, enc) and, with
    ``tgt_ids``, the decoder's attentional outputs (batch, len + 1, hidden): <s> w1 .. wn in, the
    state that predicts each word, then the one that predicts </s> (which the index leaves out).
    Numpy float32 arrays on the CPU. The extraction's code (``nmt.serving.extraction``), cheap mode."""
    states = id_states(model, device, src_ids, tgt_ids, layers=False)
    out = None if states.output is None else states.output.float().cpu().numpy()
    return states.memory.float().cpu().numpy(), out


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # (INFO lines on which of its builds it loads)
    import faiss

    return faiss


@torch.inference_mode()
def prefix_states(model, device, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> list[np.ndarray]:
    """The decoder's attentional outputs over each target prefix (<s> + ``tgt_ids[i]``: one state per
    word fed), as ``sentence_states`` gives them, but the batch shrinks as the shorter prefixes end
    (sentences run longest first), so that it costs the prefixes' total length, not the longest times
    the batch."""
    order = sorted(range(len(src_ids)), key=lambda i: -len(tgt_ids[i]))
    steps = [len(tgt_ids[i]) + 1 for i in order]
    src = pad([src_ids[i] for i in order]).to(device)
    state = model.encode(src, torch.tensor([len(src_ids[i]) for i in order], device=device))
    tgt_in = pad([[BOS_ID] + tgt_ids[i] for i in order]).to(device)
    outs = [out.float().cpu().numpy() for out, _, _ in decode_steps(model, state, tgt_in, steps)]
    found = [np.stack([outs[t][j] for t in range(n)]) for j, n in enumerate(steps)]
    result: list[np.ndarray] = [None] * len(order)
    for j, i in enumerate(order):
        result[i] = found[j]
    return result


# ----------------------------------------------------------------------------- building
@dataclass
class _Corpus:
    sources: list[str]
    targets: list[str]
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    model: object = None
    device: object = None

    def lengths(self, side: str) -> np.ndarray:
        ids = self.tgt_ids if side == "target" else self.src_ids
        return np.array([len(t) for t in ids], dtype=np.uint16)  # (at most MAX_POSITIONS)


def _corpus(translator, sources: list[str], targets: list[str]) -> _Corpus:
    """The pairs to index (tokenized; pairs with an empty side, or too long, skipped)."""
    if len(sources) != len(targets):
        raise DataError(f"{len(sources)} source sentences but {len(targets)} target sentences")
    ck = translator.checkpoint
    kept = _Corpus([], [], [], [], translator.model, translator.device)
    skipped = 0
    for source, target in zip(sources, targets):
        src, tgt = translator.src_tok.tokenize(source), translator.tgt_tok.tokenize(target)
        if not src or not tgt or max(len(src), len(tgt)) > MAX_POSITIONS or \
                max(len(source), len(target)) > MAX_LINE_CHARS or "\n" in source + target:
            skipped += 1
            continue
        kept.sources.append(source)
        kept.targets.append(target)
        kept.src_ids.append(ck.inputs.encode(src))
        kept.tgt_ids.append(ck.tgt_vocab.encode(tgt))
    if skipped:
        log.warning("index: skipped %d of %d pairs (a side empty or over %d tokens)", skipped, len(sources),
                    MAX_POSITIONS)
    if not kept.sources:
        raise DataError("no sentence pair to index (every pair has an empty side)")
    return kept


def _batches(corpus: _Corpus, order: list[int], batch_size: int):
    """(indices, memory, out) per batch of ``order``, batched by length."""
    order = sorted(order, key=lambda i: (len(corpus.src_ids[i]), len(corpus.tgt_ids[i])))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, *sentence_states(corpus.model, corpus.device, [corpus.src_ids[i] for i in chunk],
                                      [corpus.tgt_ids[i] for i in chunk])


def _rows(corpus: _Corpus, chunk: list[int], memory: np.ndarray, out: np.ndarray, side: str) -> list[np.ndarray]:
    if side == "target":
        return [out[j, : len(corpus.tgt_ids[i])] for j, i in enumerate(chunk)]  # (not the one predicting </s>)
    return [memory[j, : len(corpus.src_ids[i])] for j, i in enumerate(chunk)]


def _sample(corpus: _Corpus, settings: IndexSettings) -> dict[str, np.ndarray]:
    """States of random training sentences, at least ``train_positions`` on each side (or all)."""
    order = list(range(len(corpus.sources)))
    random.Random(settings.seed).shuffle(order)
    need = {side: settings.train_positions for side in SIDES}
    picked = []
    for i in order:
        if max(need.values()) <= 0:
            break
        picked.append(i)
        need["target"] -= len(corpus.tgt_ids[i])
        need["source"] -= len(corpus.src_ids[i])
    rows = {side: [] for side in SIDES}
    for chunk, memory, out in _batches(corpus, picked, settings.batch_size):
        for side in SIDES:
            rows[side] += _rows(corpus, chunk, memory, out, side)
    return {side: np.ascontiguousarray(np.concatenate(rows[side]), dtype=np.float32) for side in SIDES}


@dataclass
class _Quantizer:
    rotation: np.ndarray  # (rotated_dim, dim)
    centroids: np.ndarray  # (m, 2**bits, rotated_dim / m)
    bits: int
    pq: object = None  # the trained faiss.ProductQuantizer (encodes)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.pq.compute_codes(np.ascontiguousarray(x @ self.rotation.T, dtype=np.float32))


def _train_quantizer(x: np.ndarray, m: int, bits: int, iterations: int) -> _Quantizer:
    """An OPQ rotation (Ge et al. 2013) then a product quantizer, trained on the states ``x``.
    Fewer than 2**bits states (a tiny corpus) get fewer bits: k-means needs a point per centroid."""
    faiss = _faiss()
    d = x.shape[1]
    m = max(1, min(m, d))
    rotated = d - d % m
    bits = min(bits, int(math.log2(len(x))))
    if bits < 1:
        raise DataError(f"too few training positions ({len(x)}) to build an index")
    rotation = np.eye(d, dtype=np.float32)[:rotated]  # (no OPQ: plain PQ of the first dimensions)
    if iterations > 0:
        pq = _pq(rotated, m, bits)
        opq = faiss.OPQMatrix(d, m, rotated)
        opq.niter, opq.pq = iterations, pq  # (opq.pq is borrowed: pq must outlive opq.train)
        opq.train(x)
        rotation = faiss.vector_to_array(opq.A).reshape(rotated, d)
    rotation = _half(rotation)  # (stored as fp16; the codes are made with the rounded matrices, as queries use them)
    final = _pq(rotated, m, bits)
    final.train(np.ascontiguousarray(x @ rotation.T, dtype=np.float32))
    centroids = _half(faiss.vector_to_array(final.centroids).reshape(m, 2**bits, rotated // m))
    faiss.copy_array_to_vector(centroids.ravel(), final.centroids)
    return _Quantizer(rotation, centroids, bits, final)


def _half(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to fp16, as fp32."""
    return np.ascontiguousarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def _pq(dim: int, m: int, bits: int):
    faiss = _faiss()
    pq = faiss.ProductQuantizer(dim, m, bits)
    pq.cp.min_points_per_centroid = 1  # (no warnings for small samples; k-means still needs one per centroid)
    return pq


def build_index(translator, sources: list[str], targets: list[str], folder: str | Path | None = None,
                settings: IndexSettings = IndexSettings()) -> dict:
    """Index the hidden states of the training pairs ``sources``/``targets`` (raw text) for
    :func:`find_neighbors`, writing the index files into ``folder`` (default: the checkpoint's).
    Returns index.json's content."""
    folder = Path(folder or translator.checkpoint.path or "")
    if not (folder / WEIGHTS).is_file():
        raise DataError(f"{folder}: not a checkpoint folder (no {WEIGHTS}); the index is written into the "
                        "model's folder")
    start = time.perf_counter()
    corpus = _corpus(translator, sources, targets)
    sample = _sample(corpus, settings)
    quantizers = {}
    for side in SIDES:
        m = settings.target_subquantizers if side == "target" else settings.source_subquantizers
        try:
            quantizers[side] = _train_quantizer(sample[side], m, settings.bits, settings.opq_iterations)
        except RuntimeError as exc:  # (faiss reports its errors so)
            raise NMTError(f"cannot train the {side} quantizer: {exc}") from None
        log.info("index: %s quantizer trained on %d states (%.0f s)", side, len(sample[side]),
                 time.perf_counter() - start)
    del sample
    arrays = _encode_all(corpus, quantizers, settings)
    config = _index_config(translator, corpus, quantizers, settings, folder)
    config["build_seconds"] = round(time.perf_counter() - start, 1)
    _write(folder, config, arrays, corpus)
    return config


def _encode_all(corpus: _Corpus, quantizers: dict[str, _Quantizer], settings: IndexSettings) -> dict[str, np.ndarray]:
    """Every training position's codes, in sentence order, with the arrays that rebuild each side."""
    arrays = {}
    offsets = {}
    for side, q in quantizers.items():
        lengths = corpus.lengths(side)
        offsets[side] = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        arrays[f"{side}.codes"] = np.zeros((int(offsets[side][-1]), q.pq.code_size), dtype=np.uint8)
        arrays[f"{side}.lengths"] = lengths
        arrays[f"{side}.rotation"] = q.rotation.astype(np.float16)
        arrays[f"{side}.centroids"] = q.centroids.astype(np.float16)
    done, every = 0, max(1, len(corpus.sources) // 10)
    for chunk, memory, out in _batches(corpus, list(range(len(corpus.sources))), settings.batch_size):
        for side, q in quantizers.items():
            codes = q.encode(np.concatenate(_rows(corpus, chunk, memory, out, side)))
            at = 0
            for i in chunk:
                n = int(offsets[side][i + 1] - offsets[side][i])
                arrays[f"{side}.codes"][offsets[side][i] : offsets[side][i + 1]] = codes[at : at + n]
                at += n
        done += len(chunk)
        if done // every != (done - len(chunk)) // every:
            log.info("index: %d of %d sentences encoded", done, len(corpus.sources))
    return arrays


def _index_config(translator, corpus: _Corpus, quantizers: dict[str, _Quantizer], settings: IndexSettings,
                  folder: Path) -> dict:
    sides = {}
    for side, q in quantizers.items():
        lengths = corpus.lengths(side)
        m = q.centroids.shape[0]
        sides[side] = {"dim": int(q.rotation.shape[1]), "rotated_dim": int(q.rotation.shape[0]), "subquantizers": m,
                       "bits": q.bits, "positions": int(lengths.sum()),
                       "candidates": settings.target_candidates if side == "target" else settings.source_candidates}
    return {"format_version": INDEX_FORMAT, "kind": "nmt nearest training states", "metric": "euclidean",
            "sentences": len(corpus.sources), "target": sides["target"], "source": sides["source"],
            "states": {"target": "decoder attentional output h~_t, one per target token (the state that predicted it)",
                       "source": "encoder memory h_s, one per source token"},
            "weights_sha256": file_sha256(folder / WEIGHTS), "settings": dataclasses.asdict(settings)}


def _write(folder: Path, config: dict, arrays: dict[str, np.ndarray], corpus: _Corpus) -> None:
    """The files, each written atomically; index.json last, with the others' SHA-256, so that a set
    mixed by an interrupted rebuild is refused when loaded. The sentences are gzipped (a third the size)."""
    from safetensors.numpy import save

    texts = {INDEX_SOURCES: corpus.sources, INDEX_TARGETS: corpus.targets}
    data = {INDEX_ARRAYS: save({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
            **{name: gzip.compress("".join(s + "\n" for s in lines).encode("utf-8"), 9, mtime=0)
               for name, lines in texts.items()}}
    config["files"] = {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
    data[INDEX_CONFIG] = (json.dumps(config, indent=2) + "\n").encode("utf-8")
    for name, blob in data.items():
        path = folder / name
        if path.is_symlink():  # (write the folder's own file, never through a link: a Hub cache's blob, say)
            path.unlink()
        with atomic_output(path, "index file") as fh:
            fh.flush()
            fh.buffer.write(blob)


# ----------------------------------------------------------------------------- loading (untrusted files)
@dataclass
class _Side:
    rotation: np.ndarray  # (rotated_dim, dim)
    index: object  # faiss.IndexPQ over the rotated states
    offsets: np.ndarray  # (sentences + 1,) first position of each sentence
    candidates: int

    def search(self, state: np.ndarray, count: int) -> list[tuple[int, int]]:
        """(sentence, position) of the ``count`` positions nearest ``state`` in the quantized index."""
        query = np.ascontiguousarray((self.rotation @ state)[None], dtype=np.float32)
        _, found = self.index.search(query, min(count, self.index.ntotal))
        flat = found[0][found[0] >= 0]
        sentences = np.searchsorted(self.offsets, flat, side="right") - 1
        return [(int(s), int(f - self.offsets[s])) for s, f in zip(sentences, flat)]


@dataclass
class NeighborIndex:
    sources: list[str]
    targets: list[str]
    sides: dict[str, _Side]
    tokenizers: dict[str, object]  # "source", "target": the translator's tokenizers

    def __post_init__(self):
        # The tokens of recently re-ranked sentences (common ones come back query after query); thread-safe.
        self._joined = functools.lru_cache(maxsize=TOKEN_CACHE)(self._tokenize)

    def tokens(self, side: str, sentence: int) -> list[str]:
        """The tokens of training sentence ``sentence`` on ``side``."""
        joined = self._joined(side, sentence)
        return joined.split("\n") if joined else []

    def _tokenize(self, side: str, sentence: int) -> str:
        # (one string a sentence, tokens joined by "\n", which no line holds: a tenth of a list's memory)
        return "\n".join(self.tokenizers[side].tokenize((self.sources if side == "source" else self.targets)[sentence]))


def _read_json(folder: Path) -> dict:
    path = checkpoint_file(folder, INDEX_CONFIG, "index")
    data = read_capped(path, MAX_INDEX_CONFIG_BYTES, "index settings")
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: unreadable, not valid JSON") from None
    if not isinstance(config, dict) or config.get("format_version") != INDEX_FORMAT:
        raise CheckpointError(f"{path}: not an index of this program (format version {INDEX_FORMAT} expected); "
                              "rebuild it with python -m nmt index")
    return config


def _whole(config: dict, key: str, low: int, high: int, where: str) -> int:
    value = config.get(key) if isinstance(config, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{where}: {key} must be a whole number from {low:,} to {high:,}")
    return value


def _expected_arrays(config: dict, dims: dict[str, int], where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays' names, shapes and dtypes that index.json and the model make."""
    sentences = _whole(config, "sentences", 1, 10**8, where)
    expected = {}
    for side in SIDES:
        spec, at = config.get(side), f"{where} ({side})"
        dim = _whole(spec, "dim", 1, 1 << 20, at)
        if dim != dims[side]:
            raise CheckpointError(f"{at}: the index holds {dim}-dimensional states, but the model's are {dims[side]}: "
                                  "it was built for another model")
        rotated = _whole(spec, "rotated_dim", 1, dim, at)
        m = _whole(spec, "subquantizers", 1, rotated, at)
        bits = _whole(spec, "bits", 1, 8, at)
        positions = _whole(spec, "positions", sentences, sentences * MAX_POSITIONS, at)
        _whole(spec, "candidates", 1, MAX_CANDIDATES, at)
        if rotated % m:
            raise CheckpointError(f"{at}: rotated_dim must be a multiple of subquantizers")
        expected |= {f"{side}.rotation": ((rotated, dim), "F16"),
                     f"{side}.centroids": ((m, 2**bits, rotated // m), "F16"),
                     f"{side}.codes": ((positions, (m * bits + 7) // 8), "U8"),
                     f"{side}.lengths": ((sentences,), "U16")}
    return expected


_DTYPE_BYTES = {"F16": 2, "U8": 1, "U16": 2}


def _check_header(path: Path, expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """The safetensors header must describe exactly the ``expected`` arrays, and the file be exactly
    their size: checked before an array is read."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: not an index array file of this program (no or an oversized header)")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        found = {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise CheckpointError(f"{path}: not a readable safetensors file (its header)") from None
    if set(found) != set(expected):
        raise CheckpointError(f"{path}: the arrays do not match index.json (expected {', '.join(sorted(expected))})")
    for name, (shape, dtype) in expected.items():
        if found[name] != (shape, dtype):
            raise CheckpointError(f"{path}: {name} must be {dtype} of shape {list(shape)}, as index.json and the "
                                  "model make it")
    total = 8 + length + sum(math.prod(s) * _DTYPE_BYTES[d] for s, d in expected.values())
    if size != total:
        raise CheckpointError(f"{path}: {size:,} bytes, but its arrays take {total:,}")


def _read_arrays(folder: Path, config: dict, dims: dict[str, int]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = checkpoint_file(folder, INDEX_ARRAYS, "index")
    expected = _expected_arrays(config, dims, str(folder / INDEX_CONFIG))
    if not path.is_file():
        raise CheckpointError(f"{path}: the index arrays are missing or not a regular file")
    _check_header(path, expected)
    data = read_capped(path, MAX_INDEX_ARRAYS_BYTES, "index arrays")
    _check_digest(config, INDEX_ARRAYS, data, path)
    try:
        arrays = load(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
    for side in SIDES:
        lengths = arrays[f"{side}.lengths"]
        total = int(lengths.sum(dtype=np.int64))
        if lengths.min() < 1 or lengths.max() > MAX_POSITIONS or total != len(arrays[f"{side}.codes"]):
            raise CheckpointError(f"{path}: {side}.lengths must be 1 to {MAX_POSITIONS} and add up to the number "
                                  "of codes")
        if not (np.isfinite(arrays[f"{side}.rotation"]).all() and np.isfinite(arrays[f"{side}.centroids"]).all()):
            raise CheckpointError(f"{path}: the {side} rotation and centroids must be finite numbers")
    return arrays


def _check_digest(config: dict, name: str, data: bytes, path: Path) -> None:
    files = config.get("files")
    expected = files.get(name) if isinstance(files, dict) else None
    if not isinstance(expected, str) or hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{path}: does not match index.json (an interrupted or mixed build?); rebuild the index "
                              "with python -m nmt index")


def _read_texts(folder: Path, config: dict, name: str) -> list[str]:
    """One side's training sentences: a gzip file, inflated to at most MAX_INDEX_TEXT_BYTES."""
    path = checkpoint_file(folder, name, "index")
    data = read_capped(path, MAX_INDEX_TEXT_BYTES, "index sentences")
    _check_digest(config, name, data, path)
    inflate = zlib.decompressobj(wbits=31)  # (gzip; one member, as written)
    try:
        text = inflate.decompress(data, MAX_INDEX_TEXT_BYTES + 1)
    except zlib.error:
        raise CheckpointError(f"{path}: not a readable gzip file") from None
    if len(text) > MAX_INDEX_TEXT_BYTES or inflate.unconsumed_tail:
        raise CheckpointError(f"{path}: over {MAX_INDEX_TEXT_BYTES / MIB:.0f} MiB once decompressed")
    if not inflate.eof or inflate.unused_data:
        raise CheckpointError(f"{path}: not one complete gzip stream")
    lines = decode_lines(text, str(path), CheckpointError)
    if len(lines) != config["sentences"]:
        raise CheckpointError(f"{path}: {len(lines):,} lines, but index.json says {config['sentences']:,} sentences")
    if any(len(line) > MAX_LINE_CHARS for line in lines):
        raise CheckpointError(f"{path}: a line is over {MAX_LINE_CHARS:,} characters")
    return lines


def _faiss_side(arrays: dict[str, np.ndarray], side: str, candidates: int) -> _Side:
    """The FAISS index rebuilt in memory from the checked arrays."""
    faiss = _faiss()
    centroids, codes = arrays[f"{side}.centroids"], arrays[f"{side}.codes"]
    m, ksub, dsub = centroids.shape
    index = faiss.IndexPQ(m * dsub, m, int(math.log2(ksub)))
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), index.pq.centroids)
    index.is_trained = True
    faiss.copy_array_to_vector(np.ascontiguousarray(codes).ravel(), index.codes)
    index.ntotal = len(codes)
    offsets = np.concatenate([[0], np.cumsum(arrays[f"{side}.lengths"], dtype=np.int64)])
    return _Side(np.ascontiguousarray(arrays[f"{side}.rotation"], dtype=np.float32), index, offsets, candidates)


def load_index(translator) -> NeighborIndex:
    """The checkpoint's index, checked (see the module's docstring); NMTError if it has none."""
    folder = translator.checkpoint.path
    if folder is None or not os.path.lexists(Path(folder) / INDEX_CONFIG):
        raise NMTError(NO_INDEX)
    folder = Path(folder)
    config = _read_json(folder)
    model = translator.model
    dims = {"target": model.cfg.hidden, "source": model.encoder.output_size}
    weights = config.get("weights_sha256")
    if not isinstance(weights, str) or weights != file_sha256(checkpoint_file(folder, WEIGHTS)):
        raise CheckpointError(f"{folder / INDEX_CONFIG}: the index was built for other weights than this model's; "
                              "rebuild it with python -m nmt index")
    arrays = _read_arrays(folder, config, dims)
    sources, targets = _read_texts(folder, config, INDEX_SOURCES), _read_texts(folder, config, INDEX_TARGETS)
    sides = {side: _faiss_side(arrays, side, config[side]["candidates"]) for side in SIDES}
    return NeighborIndex(sources, targets, sides, {"source": translator.src_tok, "target": translator.tgt_tok})


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def cached_index(translator) -> NeighborIndex:
    """``load_index(translator)``, loaded once per translator (thread-safe) and kept while it lives."""
    found = _CACHE.get(translator)
    if found is None:
        with _LOCK:
            found = _CACHE.get(translator)
            if found is None:
                found = _CACHE[translator] = load_index(translator)
    return found


# ----------------------------------------------------------------------------- queries
def _check_query(position, side, k) -> None:
    if side not in SIDES:
        raise NMTError(f"side must be 'target' or 'source' (got {str(side)[:20]!r})")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= MAX_K:
        raise NMTError(f"k must be a whole number between 1 and {MAX_K} (got {str(k)[:20]!r})")
    if isinstance(position, bool) or not isinstance(position, numbers.Integral) or position < 0:
        raise NMTError(f"position must be a whole number, 0 or more (got {str(position)[:20]!r})")


def _query_state(translator, src_tokens: list[str], tgt_tokens: list[str] | None, position: int) -> np.ndarray:
    """The query's state: the encoder's at source ``position`` (``tgt_tokens`` None) or the decoder's
    at target ``position`` (the state that predicted that token)."""
    ck = translator.checkpoint
    if tgt_tokens is None:
        if position >= len(src_tokens):
            raise NMTError(f"position {position} is out of range: the source has {len(src_tokens)} tokens "
                           f"(positions 0 to {len(src_tokens) - 1})")
        memory, _ = sentence_states(translator.model, translator.device, [ck.inputs.encode(src_tokens)], None)
        return memory[0, position]
    if not tgt_tokens:
        raise NMTError("the translation is empty")
    if position >= len(tgt_tokens):
        raise NMTError(f"position {position} is out of range: the translation has {len(tgt_tokens)} tokens "
                       f"(positions 0 to {len(tgt_tokens) - 1})")
    _, out = sentence_states(translator.model, translator.device, [ck.inputs.encode(src_tokens)],
                             [ck.tgt_vocab.encode(tgt_tokens[:position])])
    return out[0, position]


def _rerank(translator, index: NeighborIndex, side: str, state: np.ndarray, candidates: list[tuple[int, int]],
            k: int) -> list[tuple[float, int, int, list[str]]]:
    """The ``k`` nearest among the candidates' sentences by exact distance: each sentence's states are
    recomputed (on side "target", up to its last candidate position)."""
    ck = translator.checkpoint
    last: dict[int, int] = {}
    for sentence, position in candidates:
        last[sentence] = max(last.get(sentence, 0), position)
    sentences, src_ids, tgt_ids, tokens = [], [], [], []
    for sentence, position in last.items():
        src = index.tokens("source", sentence)
        own = src if side == "source" else index.tokens("target", sentence)
        stored = index.sides[side].offsets[sentence + 1] - index.sides[side].offsets[sentence]
        if not src or len(own) != stored:  # (another tokenizer version): skipped
            continue
        sentences.append(sentence)
        src_ids.append(ck.inputs.encode(src))
        tgt_ids.append(ck.tgt_vocab.encode(own[:position]))
        tokens.append(own)
    if not sentences:
        return []
    if side == "target":
        states = prefix_states(translator.model, translator.device, src_ids, tgt_ids)
    else:
        memory, _ = sentence_states(translator.model, translator.device, src_ids, None)
        states = [memory[j, : len(ids)] for j, ids in enumerate(src_ids)]
    found = []
    for j, sentence in enumerate(sentences):
        for position, d2 in enumerate(((states[j] - state) ** 2).sum(1)):
            found.append((float(d2), sentence, position, tokens[j]))
    found.sort(key=lambda f: (f[0], f[1], f[2]))
    return found[:k]


def find_neighbors(translator, source: str, translation: str | None = None, position: int = 0,
                   side: str = "target", k: int = 10) -> list[Neighbor]:
    """The ``k`` training positions whose states are nearest (Euclidean distance) to one state of
    ``source``: on side "target" the decoder's attentional output at output ``position`` of
    ``translation`` (tokenized; None: the model's own best translation), the state that predicted
    that token, on side "source" the encoder's state of source token ``position``. Needs the
    checkpoint's index (``python -m nmt index``)."""
    _check_query(position, side, k)
    index = cached_index(translator)
    src_tokens = translator.src_tok.tokenize(source)
    if not src_tokens:
        raise NMTError("the source sentence is empty")
    tgt_tokens = None
    if side == "target":
        if translation is None:
            tgt_tokens = translator.translate([source], replace_unk=False)[0].tokens
        else:
            tgt_tokens = translator.tgt_tok.tokenize(translation)
    found = _WORKER.submit(_search, translator, index, side, src_tokens, tgt_tokens, int(position), int(k)).result()
    return [Neighbor(index.sources[s], index.targets[s], tokens, p, math.sqrt(max(d2, 0.0)), s)
            for d2, s, p, tokens in found]


# The model's work for queries runs on one thread of its own: requests served at once (the app's 4)
# would otherwise each leave the memory of their batches with their thread (over 100 MB more for 4).
_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-neighbors")


def _search(translator, index: NeighborIndex, side: str, src_tokens: list[str], tgt_tokens: list[str] | None,
            position: int, k: int) -> list[tuple[float, int, int, list[str]]]:
    state = _query_state(translator, src_tokens, tgt_tokens, position)
    found_side = index.sides[side]
    candidates = found_side.search(state, max(found_side.candidates, k))
    return _rerank(translator, index, side, state, candidates, k)


def exact_states_mib(config: dict) -> float:
    """What the index's states would take as fp32 (for reports)."""
    return sum(config[s]["positions"] * config[s]["dim"] * 4 for s in SIDES) / MIB
