"""State and attention extraction (seq2seq-attn's ``attention_extraction.lua``).

``python -m nmt extract --model M --src F --tgt F --out DIR`` runs the model teacher-forced over given
(gold) translations and writes, for every sentence pair, every encoder layer's states, every decoder
layer's hidden states h_t, the attentional states h~_t (what the generator reads) and the attention,
into ``DIR``:

- ``states.safetensors``: float32 arrays of all sentences' positions one after the other, and int64
  offset arrays, ``n_sentences + 1`` each, that say where sentence i's block is:

  ``encoder.layer{k}`` (src positions, encoder size)    layer k's output at each source token (a bi-LSTM's two
                                                        directions concatenated, aligned with the source
                                                        positions also with ``reverse_src``); the top layer
                                                        is the memory the attention reads
  ``decoder.layer{k}`` (tgt positions, hidden)          layer k's h_t
  ``decoder.output``   (tgt positions, hidden)          h~_t, the attentional state the generator reads
  ``attention``        (attention values,)              each sentence's (n + 1, src_len) weights, flattened
  ``src_offsets``, ``tgt_offsets``, ``attention_offsets``

  A target of n tokens has n + 1 positions: the decoder reads <s> w1 .. wn, and position t is the state
  after reading input t, the one that predicts w_{t+1} (the last predicts </s>). A model without
  attention (``none``) has no ``attention`` nor ``attention_offsets``.
- ``tokens.jsonl``: one JSON line per pair, ``{"sentence": i, "src": [...], "tgt": [...]}``, the tokens as
  the model read them (an unknown word is ``<unk>``; ``src_unk``/``tgt_unk`` list its [position, word]).
- ``extraction.json``: the model, the counts, each array's shape and what its positions mean. It is
  removed first and written last: its presence marks a complete extraction.

One entry per input line, so that sentence i is line i + 1 of the input files: a pair whose source is
empty (nothing to encode) has empty blocks (``"skipped": "empty source"`` in tokens.jsonl); an empty
target with a source gets its one position, the state predicting </s>. Each file is written under a
temporary name and renamed once complete. Reading sentence i (``DIR`` the output folder)::

    >>> from safetensors.numpy import load_file
    >>> a = load_file("DIR/states.safetensors")
    >>> s, t, o = a["src_offsets"], a["tgt_offsets"], a["attention_offsets"]
    >>> enc, dec, att = a["encoder.layer0"][s[i]:s[i + 1]], a["decoder.output"][t[i]:t[i + 1]], a["attention"][o[i]:o[i + 1]].reshape(t[i + 1] - t[i], s[i + 1] - s[i])

(``safetensors.safe_open(path, "np").get_slice(name)[a:b]`` reads one block of a large file; with
``layers=False`` the one encoder array is the top layer's, ``encoder.layer{layers - 1}``.)

The nearest-neighbour index (``nmt.serving.neighbors``) computes its states with :func:`batch_states`
too, in its cheap mode (``layers=False``: the encoder's memory and the decoder's outputs only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nmt.data import pad
from nmt.errors import DataError, NMTError
from nmt.safe_io import MIB, atomic_output, current_umask
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

GIB = 1024 * MIB
MAX_BYTES = 4 * GIB  # default limit on states.safetensors
FORMAT_VERSION = 1
STATES, TOKENS, INFO = "states.safetensors", "tokens.jsonl", "extraction.json"
TARGET_SPECIALS = (PAD_ID, BOS_ID, EOS_ID)  # read as <unk> in a given target (as Translator.score does)


# ----------------------------------------------------------------------------- states of a batch
@dataclass
class States:
    """Teacher-forced states of a padded batch, batch-first tensors on the model's device (positions
    past a sentence's length are padding). tgt_len = n + 1: <s> w1 .. wn read, the last predicts </s>."""

    memory: torch.Tensor  # (batch, src_len, enc) the encoder's output, aligned with the source
    output: torch.Tensor | None = None  # (batch, tgt_len, hidden) h~_t; None without a target
    attention: torch.Tensor | None = None  # (batch, tgt_len, src_len); None without attention or target
    encoder_layers: list[torch.Tensor] | None = None  # per layer (batch, src_len, enc); the last recomputes memory
    decoder_layers: list[torch.Tensor] | None = None  # per layer (batch, tgt_len, hidden) h_t


@torch.inference_mode()
def batch_states(model, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor | None = None,
                 layers: bool = True) -> States:
    """The states of ``src`` (batch, src_len) and, with ``tgt_in`` (batch, tgt_len: <s> then the target),
    of the decoder reading it. ``layers=False`` (the cheap mode the neighbour index uses) leaves out the
    per-layer states: only the memory, h~_t and the attention."""
    if layers and model.training:
        raise NMTError("state extraction needs the model in eval mode (model.eval()): dropout would differ")
    if tgt_in is None:
        memory, _ = model.encoder(src, src_lengths)
        found = States(memory)
    else:
        state = model.encode(src, src_lengths)
        steps = decode_steps(model, state, tgt_in)
        attention = torch.stack([a for _, a, _ in steps], 1) if model.has_attention else None
        found = States(state["memory"], torch.stack([out for out, _, _ in steps], 1), attention)
        if layers:
            hs = torch.stack([h for _, _, h in steps], 1)  # (batch, tgt_len, layers, hidden)
            found.decoder_layers = list(hs.unbind(2))
    if layers:
        found.encoder_layers = encoder_layers(model.encoder, src, src_lengths)
    return found


def id_states(model, device, src_ids: list[list[int]], tgt_ids: list[list[int]] | None = None,
              layers: bool = True) -> States:
    """:func:`batch_states` of token ids (each target without <s>: it is added), padded here."""
    src = pad(src_ids).to(device)
    lengths = torch.tensor([len(s) for s in src_ids], device=device)
    tgt_in = None if tgt_ids is None else pad([[BOS_ID] + t for t in tgt_ids]).to(device)
    return batch_states(model, src, lengths, tgt_in, layers)


def decode_steps(model, state: dict, tgt_in: torch.Tensor, steps: list[int] | None = None) -> list[tuple]:
    """The decoder reading ``tgt_in`` (batch, tgt_len), teacher-forced, one ``decoder.step`` at a time
    (as ``InputFeedDecoder.forward``): per position, (h~_t (rows, hidden), attention (rows, src_len) or
    None, h (rows, layers, hidden)). With ``steps`` (each row's positions, rows longest first) the batch
    shrinks to the rows still reading, so that ragged prefixes cost their total length."""
    emb = model.decoder.embeddings(tgt_in)  # (batch, tgt_len, emb)
    found = []
    for t, emb_t in enumerate(emb.unbind(1)):
        if steps is not None:
            rows = sum(1 for n in steps if n > t)
            state = {key: value[:rows] for key, value in state.items()}
            emb_t = emb_t[:rows]
        out, attn, state = model.decoder.step(emb_t, state)
        found.append((out, attn, state["h"]))
    return found


def encoder_layers(encoder, src: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output (batch, src_len, enc), aligned with the source positions (the encoder's
    ``layer_outputs``: its stacked RNN returns only the top layer's)."""
    return encoder.layer_outputs(src, lengths)


# ----------------------------------------------------------------------------- extraction to files
@dataclass
class _Pairs:
    """The tokenized pairs, one per input line, and each one's block lengths."""

    src_ids: list[list[int]] = field(default_factory=list)
    tgt_ids: list[list[int]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # tokens.jsonl's lines

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target positions per sentence (0 and 0 for an empty source)."""
        src = np.array([len(s) for s in self.src_ids], dtype=np.int64)
        tgt = np.array([len(t) + 1 if s else 0 for s, t in zip(self.src_ids, self.tgt_ids)], dtype=np.int64)
        return src, tgt


def _read_as(vocab, tokens: list[str], ids: list[int]) -> tuple[list[str], list[list]]:
    """The tokens as the model reads ``ids``, and [position, word] of each word it reads as another."""
    read = vocab.decode(ids)
    return read, [[p, w] for p, (w, r) in enumerate(zip(tokens, read)) if w != r]


def _pairs(translator, sources: list[str], targets: list[str]) -> _Pairs:
    if len(sources) != len(targets):
        raise DataError(f"{len(sources):,} source lines but {len(targets):,} target lines: extraction needs one "
                        "target translation per source line")
    if not sources:
        raise DataError("nothing to extract: no sentence pairs")
    ck, pairs = translator.checkpoint, _Pairs()
    for i, (source, target) in enumerate(zip(sources, targets)):
        src, tgt = translator.src_tok.tokenize(source), translator.tgt_tok.tokenize(target)
        src_ids = ck.inputs.encode(src)  # (as Translator.translate reads a source)
        tgt_ids = [UNK_ID if t in TARGET_SPECIALS else t for t in ck.tgt_vocab.encode(tgt)]  # (as Translator.score)
        record = {"sentence": i}
        if ck.inputs.plain:
            record["src"], src_unk = _read_as(ck.src_vocab, src, src_ids)
        else:  # (characters or features: the tokens as given, and the words the encoder cannot tell from <unk>)
            unknown = set(ck.inputs.unknown(src))
            record["src"], src_unk = src, [[p, w] for p, w in enumerate(ck.inputs.words_of(src)) if w in unknown]
        record["tgt"], tgt_unk = _read_as(ck.tgt_vocab, tgt, tgt_ids)
        record |= {key: v for key, v in (("src_unk", src_unk), ("tgt_unk", tgt_unk)) if v}
        if not src:
            record["skipped"] = "empty source"
        pairs.src_ids.append(src_ids)
        pairs.tgt_ids.append(tgt_ids)
        pairs.records.append(record)
    if all(not s for s in pairs.src_ids):
        raise DataError("nothing to extract: every source line is empty")
    return pairs


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n_sentences + 1,)


def _layout(model, src_len: np.ndarray, tgt_len: np.ndarray, layers: bool) -> dict[str, tuple[tuple, str]]:
    """Each array's (shape, safetensors dtype), in file order (int64 first: every later start stays aligned)."""
    n_src, n_tgt, n_att = int(src_len.sum()), int(tgt_len.sum()), int((src_len * tgt_len).sum())
    offsets = ("src_offsets", "tgt_offsets") + (("attention_offsets",) if model.has_attention else ())
    found = {name: ((len(src_len) + 1,), "I64") for name in offsets}
    enc, hidden, n_layers = model.encoder.output_size, model.cfg.hidden, model.cfg.layers
    for k in range(n_layers) if layers else (n_layers - 1,):  # (the cheap mode keeps the top layer, the memory)
        found[f"encoder.layer{k}"] = ((n_src, enc), "F32")
    for k in range(n_layers) if layers else ():
        found[f"decoder.layer{k}"] = ((n_tgt, hidden), "F32")
    found["decoder.output"] = ((n_tgt, hidden), "F32")
    if model.has_attention:
        found["attention"] = ((n_att,), "F32")
    return found


def _header(layout: dict[str, tuple[tuple, str]]) -> bytes:
    """The safetensors header of ``layout``: 8 bytes of length, then JSON padded with spaces to 8 bytes."""
    header, start = {"__metadata__": {"format": "nmt.extraction", "version": str(FORMAT_VERSION)}}, 0
    for name, (shape, dtype) in layout.items():
        end = start + int(np.prod(shape)) * (8 if dtype == "I64" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}
        start = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _file_bytes(layout: dict[str, tuple[tuple, str]]) -> int:
    return len(_header(layout)) + sum(int(np.prod(s)) * (8 if d == "I64" else 4) for s, d in layout.values())


def _check_size(layout: dict, out_dir: Path, max_bytes: int) -> int:
    """The size states.safetensors will have, refused over ``max_bytes`` or the free disk space."""
    size = _file_bytes(layout)
    if size > max_bytes:
        raise DataError(f"the extraction would write {_size(size)}, over the limit of {_size(max_bytes)} (max_bytes): "
                        "extract fewer or shorter sentences, or raise the limit")
    free = shutil.disk_usage(out_dir).free
    if size > free:
        raise DataError(f"{out_dir}: the extraction needs {_size(size)}, but only {_size(free)} are free")
    return size


def _size(n: int) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n:,} bytes"


@contextmanager
def _array_file(path: Path, layout: dict[str, tuple[tuple, str]]) -> Iterator[dict[str, np.ndarray]]:
    """Writable views of the arrays of a safetensors file that appears at ``path`` once complete: the
    header is written first and the data in place (a memory map), so that it never has to be in memory
    whole; on any error the temporary file is removed."""
    header = _header(layout)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # (mkstemp makes it 0600; a new file gets the usual mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            fh.truncate(_file_bytes(layout))
        views, start = {}, len(header)
        for name, (shape, dtype) in layout.items():
            np_dtype = np.int64 if dtype == "I64" else np.float32
            if np.prod(shape) > 0:  # (an empty array cannot be mapped, and has nothing to write)
                views[name] = np.memmap(tmp, np_dtype, "r+", offset=start, shape=shape)
            start += int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        yield views
        for view in views.values():
            view.flush()
        views.clear()  # (unmapped before the rename)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fill(views: dict[str, np.ndarray], states: States, chunk: list[int], offsets: dict[str, np.ndarray],
          top: int) -> None:
    """Copy a batch's states (row j = sentence ``chunk[j]``) into their blocks of the arrays; ``top`` is
    the encoder's top layer (the memory, the one encoder array of the cheap mode)."""
    encoder = states.encoder_layers or [None] * top + [states.memory]
    blocks = {f"encoder.layer{k}": ("src", x) for k, x in enumerate(encoder) if x is not None}
    blocks |= {f"decoder.layer{k}": ("tgt", x) for k, x in enumerate(states.decoder_layers or [])}
    blocks["decoder.output"] = ("tgt", states.output)
    if states.attention is not None:
        blocks["attention"] = ("attention", states.attention)
    for name, (side, x) in blocks.items():
        x = x.float().cpu().numpy()  # (batch, len, size) or attention (batch, tgt_len, src_len)
        o = offsets[side]
        for j, i in enumerate(chunk):
            if side == "attention":
                n_src, n_tgt = offsets["src"][i + 1] - offsets["src"][i], offsets["tgt"][i + 1] - offsets["tgt"][i]
                views[name][o[i] : o[i + 1]] = x[j, :n_tgt, :n_src].ravel()
            else:
                views[name][o[i] : o[i + 1]] = x[j, : o[i + 1] - o[i]]


def extract(translator, sources: list[str], targets: list[str], out_dir: str | Path, batch_size: int = 64,
            layers: bool = True, max_bytes: int = MAX_BYTES) -> dict:
    """Teacher-force ``translator``'s model over the pairs ``sources``/``targets`` (raw text, one per
    line, tokenized as the translator tokenizes) and write states.safetensors, tokens.jsonl and
    extraction.json into ``out_dir`` (created if need be; see the module's docstring). ``layers=False``:
    no per-layer states, only the encoder's top layer, decoder.output and the attention. Refused before
    anything is computed if states.safetensors would be over ``max_bytes``. Returns extraction.json's
    content (:func:`summary` makes a line of it)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NMTError(f"batch_size must be a whole number, 1 or more (got {str(batch_size)[:20]!r})")
    start = time.perf_counter()
    out_dir = _out_dir(out_dir)
    model, pairs = translator.model, _pairs(translator, sources, targets)
    src_len, tgt_len = pairs.lengths()
    layout = _layout(model, src_len, tgt_len, layers)
    size = _check_size(layout, out_dir, max_bytes)
    offsets = {"src": _offsets(src_len), "tgt": _offsets(tgt_len), "attention": _offsets(src_len * tgt_len)}
    (out_dir / INFO).unlink(missing_ok=True)  # (written last: never beside the states of another run)
    with _array_file(out_dir / STATES, layout) as views:
        for name in ("src", "tgt", "attention"):
            if f"{name}_offsets" in views:
                views[f"{name}_offsets"][:] = offsets[name]
        _compute(translator, pairs, views, offsets, batch_size, layers)
    with atomic_output(out_dir / TOKENS, "token file") as fh:
        for record in pairs.records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    info = _info(translator, pairs, layout, size, layers, out_dir)
    info["seconds"] = round(time.perf_counter() - start, 2)
    with atomic_output(out_dir / INFO, "extraction summary") as fh:
        json.dump(info, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    return info


def _out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"{out_dir}: not a folder; the extraction writes its files into a folder") from None
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    return out_dir


def _compute(translator, pairs: _Pairs, views: dict, offsets: dict, batch_size: int, layers: bool) -> None:
    """The states of every pair with a source, in batches of similar lengths, into ``views``."""
    model = translator.model
    todo = sorted((i for i, s in enumerate(pairs.src_ids) if s),
                  key=lambda i: (len(pairs.src_ids[i]), len(pairs.tgt_ids[i])))
    done = 0
    for begin in range(0, len(todo), batch_size):
        chunk = todo[begin : begin + batch_size]
        states = id_states(model, translator.device, [pairs.src_ids[i] for i in chunk],
                           [pairs.tgt_ids[i] for i in chunk], layers)
        _fill(views, states, chunk, offsets, model.cfg.layers - 1)
        done += len(chunk)
        if done * 10 // len(todo) != (done - len(chunk)) * 10 // len(todo):  # (each tenth)
            log.info("extract: %d of %d sentence pairs", done, len(todo))


_MEANING = {
    "encoder.layer{k}": "encoder layer k's output at each source token, aligned with the source positions (a "
                        "bi-LSTM's forward then backward direction; with reverse_src the forward direction read "
                        "the source right to left); the top layer is the memory the attention reads",
    "decoder.layer{k}": "decoder layer k's hidden state h_t at each target position",
    "decoder.output": "the attentional state h~_t the generator reads (h_t of the top layer without attention)",
    "attention": "per sentence, its (target positions, source positions) attention weights flattened row by row",
    "target positions": "n + 1 for a target of n tokens: position t is the state after reading <s> w1 .. wn's t-th "
                        "input, the one predicting w_(t+1); the last predicts </s>",
    "offsets": "sentence i's block is [offsets[i], offsets[i + 1]); sentence i is input line i + 1; an empty "
               "source has empty blocks",
}


def _info(translator, pairs: _Pairs, layout: dict, size: int, layers: bool, out_dir: Path) -> dict:
    model, ck = translator.model, translator.checkpoint
    src_len, tgt_len = pairs.lengths()
    cfg = model.cfg
    return {
        "format_version": FORMAT_VERSION,
        "model": str(ck.path) if ck.path is not None else None,
        "src_lang": ck.src_lang, "tgt_lang": ck.tgt_lang,
        "model_config": {"layers": cfg.layers, "hidden": cfg.hidden, "encoder_size": model.encoder.output_size,
                         "brnn": cfg.brnn, "reverse_src": cfg.reverse_src, "attention": cfg.attention},
        "out_dir": str(out_dir),
        "layers": layers,
        "sentences": len(pairs.src_ids),
        "empty_sources": [r["sentence"] for r in pairs.records if "skipped" in r],
        "src_positions": int(src_len.sum()), "tgt_positions": int(tgt_len.sum()),
        "bytes": size,
        "files": [STATES, TOKENS, INFO],
        "arrays": {name: {"shape": list(shape), "dtype": "int64" if d == "I64" else "float32"}
                   for name, (shape, d) in layout.items()},
        "meaning": _MEANING,
    }


def summary(info: dict) -> str:
    """One line about an extraction (``extract``'s result), for the command line."""
    empty = len(info["empty_sources"])
    return (f"extracted {info['sentences']:,} sentence pairs ({info['src_positions']:,} source and "
            f"{info['tgt_positions']:,} target positions{f', {empty:,} empty sources' if empty else ''}) to "
            f"{Path(info['out_dir']) / STATES} ({_size(info['bytes'])}, {len(info['arrays'])} arrays) "
            f"in {info['seconds']:.1f} s")
