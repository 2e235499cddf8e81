"""``tracked.jsonl``: how a few fixed validation sentences were translated, and attended, after every epoch.

Training (``--track-sentences``) writes one JSON object a line, one line an epoch, in epoch order::

    {"epoch": 3, "sentences": [{"source": ["Ein", "Hund", "läuft", "."],
                                "translation": ["A", "dog", "runs", "."],
                                "attention": [[0.9, 0.05, 0.03, 0.02], ...]}, ...]}

``attention`` has ``len(translation) + 1`` rows (the last is the step that produced ``</s>``) and
``len(source)`` columns; the sentences (their ``source``) are the same at every epoch. The app's model
card draws it (``nmt.serving.plots.tracked_attention_figure``): a heatmap with a slider over the epochs.

The file comes with a checkpoint, which is untrusted: :func:`read_tracked` reads it only as a regular
file inside the checkpoint folder, at most ``MAX_TRACKED_BYTES``, and checks every line; anything
malformed gives None and one logged warning (never an exception: a model card must still render).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from nmt.checkpoint import MAX_TRACKED_BYTES
from nmt.errors import CheckpointError
from nmt.hub import TRACKED_FILE
from nmt.safe_io import checkpoint_file, decode_lines, read_capped

logger = logging.getLogger(__name__)
MAX_SENTENCES, MAX_TOKENS, MAX_TOKEN_CHARS = 20, 200, 100


class _Malformed(ValueError):
    """A line of tracked.jsonl that is not what training writes (the message says where and what)."""


def read_tracked(folder: str | Path | None) -> list[dict] | None:
    """The per-epoch records of ``folder/tracked.jsonl``, in epoch order: ``{"epoch": int, "sentences":
    [{"source": [str], "translation": [str], "attention": [[float]] or None}]}`` (only these keys; the
    attention of a model without attention may be null). None when the file is absent, empty, too large,
    not a regular file inside the folder, or malformed anywhere (then with one warning)."""
    if folder is None:
        return None
    folder = Path(folder)
    path = folder / TRACKED_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = read_capped(checkpoint_file(folder, TRACKED_FILE), MAX_TRACKED_BYTES, "tracked sentences")
        lines = decode_lines(data, str(path), CheckpointError)
        records = _records(lines)
    except CheckpointError as exc:
        logger.warning("%s; the model card shows no tracked sentences", exc)
        return None
    except _Malformed as exc:
        logger.warning("%s: %s; the model card shows no tracked sentences", path, exc)
        return None
    return records or None


def _records(lines: list[str]) -> list[dict]:
    records: list[dict] = []
    sources: list[list[str]] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            raise _Malformed(f"line {number} is not JSON") from None
        record = _record(value, number)
        if records and record["epoch"] <= records[-1]["epoch"]:
            raise _Malformed(f"line {number}: epoch {record['epoch']} does not follow epoch {records[-1]['epoch']}")
        these = [s["source"] for s in record["sentences"]]
        if sources is not None and these != sources:
            raise _Malformed(f"line {number}: not the same sentences as line 1")
        sources = these
        records.append(record)
    return records


def _record(value, number: int) -> dict:
    where = f"line {number}"
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not a JSON object")
    epoch = value.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 1_000_000:
        raise _Malformed(f"{where}: 'epoch' is not an epoch number")
    sentences = value.get("sentences")
    if not isinstance(sentences, list) or not 1 <= len(sentences) <= MAX_SENTENCES:
        raise _Malformed(f"{where}: 'sentences' is not a list of 1 to {MAX_SENTENCES} sentences")
    return {"epoch": epoch, "sentences": [_sentence(s, f"{where}, sentence {i + 1}") for i, s in enumerate(sentences)]}


def _sentence(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not a JSON object")
    source = _tokens(value.get("source"), f"{where}: 'source'", at_least=1)
    translation = _tokens(value.get("translation"), f"{where}: 'translation'", at_least=0)
    attention = value.get("attention")
    if attention is not None:
        rows, cols = len(translation) + 1, len(source)
        if (not isinstance(attention, list) or len(attention) != rows
                or not all(isinstance(row, list) and len(row) == cols for row in attention)):
            raise _Malformed(f"{where}: 'attention' is not {rows} rows (the translation's words and </s>) "
                             f"of {cols} weights (one per source word)")
        if not all(_weight(w) for row in attention for w in row):
            raise _Malformed(f"{where}: 'attention' holds a weight that is not a number from 0 to 1")
        attention = [[float(w) for w in row] for row in attention]
    return {"source": source, "translation": translation, "attention": attention}


def _tokens(value, where: str, at_least: int) -> list[str]:
    if not isinstance(value, list) or not at_least <= len(value) <= MAX_TOKENS:
        raise _Malformed(f"{where} is not a list of {at_least} to {MAX_TOKENS} words")
    if not all(isinstance(t, str) and 0 < len(t) <= MAX_TOKEN_CHARS for t in value):
        raise _Malformed(f"{where} holds something that is not a word of 1 to {MAX_TOKEN_CHARS} characters")
    return list(value)


def _weight(w) -> bool:
    return not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and 0.0 <= w <= 1.0
