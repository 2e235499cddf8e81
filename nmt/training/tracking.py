"""Attention over training: after every epoch, the greedy translation and attention of a few fixed
sentences (the first ``--track-sentences`` validation ones, or ``--track-file``'s), one JSON line per
epoch in ``tracked.jsonl`` (``nmt.hub.TRACKED_FILE``: the save dir's, copied into ``best/``): the app
plays them epoch by epoch (``nmt.serving.tracked``), the diagonal forming as the translation improves.

A line: ``{"epoch": 3, "sentences": [{"source": [...], "translation": [...], "attention": [[...]]}]}``;
``attention`` has a row per translation word (the step that produced it) and one for ``</s>``, a
column per source word, rounded to 3 decimals (about 1 KB a sentence and epoch); null without attention.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nmt.data import ParallelDataset, read_lines, tokenize_all
from nmt.errors import CheckpointError, DataError
from nmt.safe_io import atomic_output

MAX_TRACKED = 20  # sentences


def tracked_sentences(train_cfg, valid_src_tok: list[list[str]], valid_ids: list, data_cfg, inputs):
    """(source tokens, model inputs) of the sentences to track; None-free, possibly empty."""
    n = train_cfg.track_sentences
    if not 0 <= n <= MAX_TRACKED:
        raise ValueError(f"--track-sentences must be between 0 and {MAX_TRACKED} (got {n})")
    if train_cfg.track_file:
        lines = read_lines(train_cfg.track_file)
        tokens = [t for t in tokenize_all(lines, data_cfg.src_lang, inputs.mode == "inline") if t][:MAX_TRACKED]
        return tokens, [inputs.encode(t, f"{train_cfg.track_file} sentence {i + 1}") for i, t in enumerate(tokens)]
    keep = [i for i, t in enumerate(valid_src_tok) if t][:n]
    return [valid_src_tok[i] for i in keep], [valid_ids[i] for i in keep]


def epoch_record(epoch: int, sources: list[list[str]], outputs: list[list[int]], attention: list, tgt_vocab) -> dict:
    """One line of ``tracked.jsonl``: each tracked sentence's greedy output (ids) and its attention."""
    return {"epoch": epoch, "sentences": [
        {"source": list(source), "translation": tgt_vocab.decode(out),
         "attention": None if att is None else [[round(w, 3) for w in row] for row in att]}
        for source, out, att in zip(sources, outputs, attention)]}


@torch.no_grad()
def forced_attention(model, src_ids: list, outputs: list[list[int]], device) -> list:
    """The attention (len(output) + 1, source length) of each output read back teacher-forced: search
    leaves out the step that writes </s>, the tracked record keeps it. None for a model without attention."""
    was_training = model.training
    model.eval()
    batch = ParallelDataset(src_ids, outputs).make_batch(list(range(len(outputs)))).to(device)
    _, attention = model(batch.src, batch.src_lengths, batch.tgt_in)
    model.train(was_training)
    if attention is None:
        return [None] * len(outputs)
    return [attention[i, : len(out) + 1, : int(batch.src_lengths[i])].float().cpu().tolist()
            for i, out in enumerate(outputs)]


def write_tracked(records: list[dict], path: Path) -> None:
    """``path`` with one line per epoch, replaced atomically."""
    try:
        with atomic_output(path, "tracked sentences") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
