"""A word aligner's links for the sentence pairs of the app's data, to draw on attention heatmaps.

``scripts/align_multi30k.sh`` word-aligns Multi30k (eflomal, symmetrised with grow-diag-final-and) into
``<repo>/alignments/{split}.{src}-{tgt}.align`` (``$NMT_ALIGNMENTS`` overrides the folder), one line of
Pharaoh links per line of the data folder's ``{split}.{lang}.gz`` (``$NMT_DATA``, else the catalog's
``DEFAULT_DATA``), over Moses tokens. When a (source, target tokens) pair shown in the app is one of
those pairs (a Multi30k sentence with its reference translation), :func:`known_links` gives its links,
whose positions are the heatmap's columns and rows::

    from nmt.serving import alignments, plots
    fig = plots.attention_figure(translation)
    alignments.mark_known_links(fig, "de", "en", translation.src_tokens, translation.tokens)

The index is built once per direction and folder, at first use (thread-safe), without tokenizing the
corpus: a pair is found by a hash of its source's characters without spaces (what Moses tokens join to),
then checked token by token (both sides Moses-tokenized again). Multi30k's 31,000 pairs take about 7 MB
and a second to index (9 MB for both directions: they share the data's lines).
A missing folder or file means no links, silently (a Space has no alignments); an unreadable, oversized
or inconsistent file is logged once and counts as missing: looking links up never breaks a translation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

from nmt.alignment import Link, format_links, read_alignments, swap_links
from nmt.errors import DataError
from nmt.safe_io import MIB, decode_lines, read_capped
from nmt.serving import catalog
from nmt.tokenization import get_tokenizer

logger = logging.getLogger(__name__)

ALIGNMENTS_ENV = "NMT_ALIGNMENTS"
SPLITS = ("train", "val", "test_2016_flickr")
MAX_DATA_BYTES = 64 * MIB  # one data file, gzipped and unpacked (Multi30k's largest: 0.6 MB gzipped, 2.1 MB plain)
TRACE_NAME = "alignment"  # the heatmap trace of the links (plots.add_alignment_links' default)
CAPTION = "word aligner's links (eflomal) shown as squares"
_LANG = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})?")  # (a Hub checkpoint's language names a file here)
_LINK = re.compile(rb"([0-9]+)-([0-9]+)")


def alignments_dir() -> Path:
    """``$NMT_ALIGNMENTS``, else ``<repo>/alignments``."""
    return Path(os.environ.get(ALIGNMENTS_ENV) or catalog.REPO_ROOT / "alignments").expanduser()


def data_dir() -> Path:
    """The app's data folder (``catalog.data_folder``), where the app's examples come from."""
    return catalog.data_folder()


# ----------------------------------------------------------------------------- looking up
def known_links(src_lang: str, tgt_lang: str, source: str | Sequence[str],
                target_tokens: Sequence[str]) -> list[Link] | None:
    """The aligner's links ``(source position, target position)`` of this pair, or None when it is not one
    of the aligned pairs or there are none (``[]``: an aligned pair the aligner left unlinked). ``source``:
    the sentence (Moses-tokenized here) or its tokens (those of the heatmap's columns); ``target_tokens``:
    the heatmap's rows (without ``</s>``). Both sides must be the pair's Moses tokens exactly. Never raises."""
    try:
        if not (_LANG.fullmatch(str(src_lang)) and _LANG.fullmatch(str(tgt_lang))):
            return None
        src = get_tokenizer(src_lang).tokenize(source) if isinstance(source, str) else [str(t) for t in source]
        tgt = [str(t) for t in target_tokens]
        if not src or not tgt:
            return None
        corpus = _corpus(src_lang, tgt_lang)
        return corpus.find(src, tgt) if corpus is not None else None
    except Exception as exc:  # noqa: BLE001 (a bug, or a surprise in a file: no links, the translation goes on)
        _log_once(f"looking up word alignments failed ({type(exc).__name__}: {exc}); showing none")
        return None


def mark_known_links(fig, src_lang: str, tgt_lang: str, source: str | Sequence[str],
                     target_tokens: Sequence[str]) -> list[Link] | None:
    """Draw the pair's known links on ``fig`` (a ``plots.attention_figure``) as the trace ``TRACE_NAME``;
    the links, or None (``fig`` unchanged) when none are known. Never raises."""
    from nmt.serving.plots import add_alignment_links  # (plotly: only where figures are drawn)

    links = known_links(src_lang, tgt_lang, source, target_tokens)
    if not links:
        return None
    try:
        add_alignment_links(fig, links, name=TRACE_NAME)
    except ValueError as exc:  # (links outside the heatmap: it shows other words than the pair's)
        _log_once(f"word alignment links not drawn: {exc}")
        return None
    return links


def figure_has_links(figure) -> bool:
    """Whether a heatmap (a Plotly figure or its JSON) carries the aligner's links."""
    if figure is None:
        return False
    traces = (figure.get("data") or []) if isinstance(figure, dict) else figure.data
    return any((t.get("name") if isinstance(t, dict) else t.name) == TRACE_NAME for t in traces)


def caption(label: str, figure) -> str:
    """A heatmap's label, with :data:`CAPTION` when the figure shows the aligner's links."""
    return f"{label} · {CAPTION}" if figure_has_links(figure) else label


def clear_cache() -> None:
    """Forget the indexes built (they are rebuilt at the next look-up: after the files changed, in tests)."""
    with _LOCK:
        _CORPORA.clear()
        _LINES.clear()
        _LOGGED.clear()


# ----------------------------------------------------------------------------- the index
def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _joined(line: bytes) -> str:
    """A line's characters without whitespace: what its Moses tokens join to (checked on all of Multi30k)."""
    return "".join(line.decode("utf-8").split())


class _Lines:
    """Lines kept as one UTF-8 blob and their offsets (a list of bytes objects would take twice the memory)."""

    def __init__(self, lines: Sequence[bytes] = ()):
        self.blob = b"".join(lines)
        self.ends = array("I", accumulate(map(len, lines)))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        return self.blob[self.ends[i - 1] if i else 0:self.ends[i]]


class _Corpus:
    """The aligned pairs of one direction: their lines, links (Pharaoh text) and the sorted keys of the sources."""

    def __init__(self, src_lang: str, tgt_lang: str, src: Sequence[_Lines], tgt: Sequence[_Lines],
                 links: Sequence[list[list[Link]]]):
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.src, self.tgt = list(src), list(tgt)  # per split (the data files' lines, shared by both directions)
        self.starts = [0, *accumulate(map(len, self.src))]  # the first pair of each split
        self.links = _Lines([format_links(pair).encode("ascii") for part in links for pair in part])
        keyed = sorted((_key(_joined(self.line(self.src, i))), i) for i in range(self.starts[-1]))
        self.keys, self.numbers = array("Q", (k for k, _ in keyed)), array("I", (i for _, i in keyed))

    def __len__(self) -> int:
        return self.starts[-1]

    def line(self, parts: list[_Lines], number: int) -> bytes:
        split = bisect_right(self.starts, number) - 1
        return parts[split][number - self.starts[split]]

    def find(self, src: list[str], tgt: list[str]) -> list[Link] | None:
        key, joined_tgt = _key("".join(src)), "".join(tgt)
        at = bisect_left(self.keys, key)
        while at < len(self.keys) and self.keys[at] == key:
            number, at = self.numbers[at], at + 1
            source, target = self.line(self.src, number), self.line(self.tgt, number)
            if (_joined(target) != joined_tgt
                    or get_tokenizer(self.src_lang).tokenize(source.decode("utf-8")) != src
                    or get_tokenizer(self.tgt_lang).tokenize(target.decode("utf-8")) != tgt):
                continue
            links = [(int(m[1]), int(m[2])) for m in _LINK.finditer(self.links[number])]
            if all(s < len(src) and t < len(tgt) for s, t in links):
                return links
            _log_once(f"word alignments: the links of a {self.src_lang}-{self.tgt_lang} pair lie outside its "
                      "Moses tokens (alignments made with another tokenizer?); showing none")
        return None


_LOCK = threading.Lock()
_CORPORA: dict[tuple, _Corpus | None] = {}
_LINES: dict[Path, _Lines | DataError] = {}  # data files, shared by both directions
_LOGGED: set[str] = set()


def _corpus(src_lang: str, tgt_lang: str) -> _Corpus | None:
    data, folder = data_dir(), alignments_dir()
    key = (str(data), str(folder), src_lang, tgt_lang)
    with _LOCK:  # (built once: a concurrent request waits for it, about a second for Multi30k)
        if key not in _CORPORA:
            _CORPORA[key] = _build(data, folder, src_lang, tgt_lang)
        return _CORPORA[key]


def _build(data: Path, folder: Path, src_lang: str, tgt_lang: str) -> _Corpus | None:
    if not (data.is_dir() and folder.is_dir()):
        return None
    sources, targets, links = [], [], []
    for split in SPLITS:
        forward, backward = folder / f"{split}.{src_lang}-{tgt_lang}.align", folder / f"{split}.{tgt_lang}-{src_lang}.align"
        path = forward if forward.exists() else backward if backward.exists() else None
        src_path, tgt_path = data / f"{split}.{src_lang}.gz", data / f"{split}.{tgt_lang}.gz"
        if path is None or not (src_path.exists() and tgt_path.exists()):
            continue
        try:
            src, tgt = _data_lines(src_path), _data_lines(tgt_path)
            if len(src) != len(tgt):
                raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
            # Moses makes at most one token per character: positions are checked against that here, against
            # the real tokens when a pair is looked up (the corpus is not tokenized in advance).
            most_src, most_tgt = ([len(_joined(lines[i])) for i in range(len(lines))] for lines in (src, tgt))
            if path is forward:
                pairs = read_alignments(path, most_src, most_tgt)
            else:
                pairs = [swap_links(pair) for pair in read_alignments(path, most_tgt, most_src)]
        except (DataError, OSError, UnicodeDecodeError, ValueError) as exc:
            _log_once(f"word alignments not used: {exc}")
            continue
        sources.append(src)
        targets.append(tgt)
        links.append(pairs)
    if not sources:
        return None
    corpus = _Corpus(src_lang, tgt_lang, sources, targets, links)
    logger.info("word alignments: %d %s-%s pairs from %s", len(corpus), src_lang, tgt_lang, folder)
    return corpus


def _data_lines(path: Path) -> _Lines:
    """A data file's lines as UTF-8 bytes, size-checked; read once for both directions (a failure too)."""
    if path not in _LINES:
        try:
            data = read_capped(path, MAX_DATA_BYTES, "data file", DataError)
            _LINES[path] = _Lines([line.encode("utf-8") for line in decode_lines(_gunzip(data, path), str(path))])
        except DataError as exc:
            _LINES[path] = exc
    if isinstance(_LINES[path], DataError):
        raise _LINES[path]
    return _LINES[path]


def _gunzip(data: bytes, path: Path) -> bytes:
    """``data`` unpacked, at most ``MAX_DATA_BYTES`` of it (read in pieces: no buffer of the limit's size)."""
    unpacked = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            while chunk := fh.read(MIB):
                unpacked.write(chunk)
                if unpacked.tell() > MAX_DATA_BYTES:
                    raise DataError(f"{path}: the data file is over the limit of {MAX_DATA_BYTES / MIB:.0f} MiB "
                                    "unpacked")
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the gzipped data file ({exc})") from None
    return unpacked.getvalue()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.warning(message)
