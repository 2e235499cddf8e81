"""Forced decoding: how probable the model finds a given translation, word by word.

The decoder reads the given target tokens (teacher forcing) and at every position we keep the
log-probability of the given token, the attention, and the words the model preferred there. The
score is normalized as search normalizes a hypothesis (``nmt.search.core.normalize``: log p /
length ** alpha, the length counting </s>), so scoring search's own best output gives its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nmt.data import pad
from nmt.search.core import normalize
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID

SCORE_BUDGET = 32_000_000  # floats of one batch's (sentences x positions x vocabulary) log-probabilities


@dataclass
class Scored:
    """A given translation of ``source`` as the model reads it."""

    source: str
    src_tokens: list[str]
    translation: str
    tokens: list[str]  # the target tokens as the model reads them (unknown words are <unk>)
    token_log_probs: list[float]  # one per token, then one for </s>
    log_prob: float  # their sum
    score: float  # normalized as search normalizes: log_prob / (len(tokens) + 1) ** length_penalty
    attention: np.ndarray | None  # (len(tokens) + 1, len(src_tokens)); None without attention
    alternatives: list[list[tuple[str, float]]]  # per position (tokens + </s>): the top words and probabilities


@dataclass
class Forced:
    """Forced decoding of one pair, on ids: what ``Scored`` is made from."""

    log_probs: list[float]  # (len(tgt) + 1)
    attention: torch.Tensor | None  # (len(tgt) + 1, src_len)
    top_ids: list[list[int]]  # (len(tgt) + 1, k)
    top_probs: list[list[float]]


@torch.inference_mode()
def forced_decoding(model, src: list[list[int]], tgt: list[list[int]], device, k: int = 5) -> list[Forced]:
    """Teacher-forced log p(tgt_i | src, tgt_<i) of every token and </s> of each pair, with the
    attention and the ``k`` most probable tokens at every position; batched within SCORE_BUDGET."""
    results: list[Forced | None] = [None] * len(src)
    order = sorted(range(len(src)), key=lambda i: len(tgt[i]))
    start = 0
    while start < len(order):
        width = len(tgt[order[min(len(order) - 1, start + 63)]]) + 1
        size = max(1, min(64, SCORE_BUDGET // (width * model.cfg.tgt_vocab)))
        chunk = order[start : start + size]
        for i, forced in zip(chunk, _forced_batch(model, [src[i] for i in chunk], [tgt[i] for i in chunk], device, k)):
            results[i] = forced
        start += size
    return results


def _forced_batch(model, src, tgt, device, k: int) -> list[Forced]:
    src_t = pad(src).to(device)
    lengths = torch.tensor([len(s) for s in src], device=device)
    tgt_in = pad([[BOS_ID] + t for t in tgt]).to(device)
    tgt_out = pad([t + [EOS_ID] for t in tgt]).to(device)
    logits, attn = model(src_t, lengths, tgt_in)  # (batch, T, V), (batch, T, src_len) or None
    logp = torch.log_softmax(logits.float(), -1)
    gold = logp.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1).masked_fill(tgt_out == PAD_ID, 0.0).cpu()
    top_p, top_i = logp.topk(min(k, logp.size(-1)), dim=-1) if k else (logp[..., :0], logp[..., :0].long())
    top_p, top_i = top_p.exp().cpu(), top_i.cpu()
    attn = attn.float().cpu() if attn is not None else None
    out = []
    for b, t in enumerate(tgt):
        n = len(t) + 1
        out.append(Forced(gold[b, :n].tolist(), attn[b, :n, : len(src[b])] if attn is not None else None,
                          top_i[b, :n].tolist(), top_p[b, :n].tolist()))
    return out


def normalized_score(log_probs: list[float], length_penalty: float) -> float:
    """The sum of ``log_probs`` (tokens and </s>) normalized as search does, in float32 as search adds."""
    total = torch.tensor(log_probs, dtype=torch.float32).sum()
    return float(normalize(total, len(log_probs), length_penalty))
