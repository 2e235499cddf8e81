"""Attention over training: after every epoch, the greedy translation and attention of a few fixed
sentences (the first ``--track-sentences`` validation ones, or ``--track-file``'s), one JSON line per
epoch in ``tracked.jsonl`` (the save dir's, copied into ``best/``): the app plays them epoch by epoch
(``nmt.serving.tracked``), the diagonal forming as the translation improves.

A line: ``{"epoch": 3, "sentences": [{"source": [...], "translation": [...], "attention": [[...]]}]}``;
``attention`` has a row per translation word (the step that produced it) and a column per source
word, rounded to 3 decimals (about 1 KB a sentence and epoch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nmt.data import read_lines, tokenize_all
from nmt.errors import CheckpointError

TRACKED_FILE = "tracked.jsonl"
MAX_TRACKED = 20  # sentences


def tracked_sentences(train_cfg, valid_src_tok: list[list[str]], valid_ids: list, data_cfg, inputs):
    """(source tokens, model inputs) of the sentences to track; None-free, possibly empty."""
    n = train_cfg.track_sentences
    if not 0 <= n <= MAX_TRACKED:
        raise ValueError(f"--track-sentences must be between 0 and {MAX_TRACKED} (got {n})")
    if train_cfg.track_file:
        tokens = [t for t in tokenize_all(read_lines(train_cfg.track_file), data_cfg.src_lang) if t][:MAX_TRACKED]
        return tokens, [inputs.encode(t, f"{train_cfg.track_file} sentence {i + 1}") for i, t in enumerate(tokens)]
    keep = [i for i, t in enumerate(valid_src_tok) if t][:n]
    return [valid_src_tok[i] for i in keep], [valid_ids[i] for i in keep]


def epoch_record(epoch: int, sources: list[list[str]], hyps: list, tgt_vocab) -> dict:
    """One line of ``tracked.jsonl`` from greedy search's hypotheses of the tracked sentences."""
    sentences = []
    for source, found in zip(sources, hyps):
        best = found[0] if found else None
        attention = [] if best is None or best.attention is None else best.attention.float().cpu().tolist()
        sentences.append({"source": list(source), "translation": tgt_vocab.decode(best.tokens) if best else [],
                          "attention": [[round(w, 3) for w in row] for row in attention]})
    return {"epoch": epoch, "sentences": sentences}


def write_tracked(records: list[dict], path: Path) -> None:
    """``path`` with one line per epoch, replaced atomically."""
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path} ({exc.strerror or exc})") from None
