"""Beam search of one sentence on a CPU (the interactive case): the core's step with its
bookkeeping on Python numbers.

A step of one sentence is mostly the overhead of its small tensor operations; the batched
bookkeeping takes a few dozen of them, this one about fifteen: each step's 2K best candidates
come to Python in one transfer (``best_candidates``) and are sorted out there. The candidates,
the finished hypotheses and the stopping rule (``sentences_done``) are the core's, so the
hypotheses and scores are those of the batched search (the tests compare them).
"""

from __future__ import annotations

import numpy as np
import torch

from nmt.search.core import (NEG_INF, Hypothesis, best_case, force_eos, force_tokens, normalize, select_rows,
                             sentences_done)
from nmt.search.history import History
from nmt.search.topk import best_candidates, candidate_sums
from nmt.vocabulary import BOS_ID, EOS_ID


def beam_search_one(model, src, lengths, K: int, n_best: int, length_penalty: float, limit: int,
                    history: History, prefix: list[int] = (), simple: bool = False) -> list[list[Hypothesis]]:
    """``beam_search`` of a batch of one sentence into ``history``; ``limit``: the most tokens before </s>;
    ``prefix``: the tokens its hypotheses begin with; ``simple``: stop when the best candidate ends."""
    shared = getattr(model, "sentence_keys", ())
    state = select_rows(model.encode(src, lengths), torch.zeros(K, dtype=torch.long), shared)
    alive = [0.0] + [NEG_INF] * (K - 1)  # the open hypotheses' scores, best first
    prev = torch.full((K,), BOS_ID, dtype=torch.long)
    finished: list[tuple[float, int, int]] = []  # the n_best best: score, length, beam extended
    stop = _StoppingRule(limit, length_penalty, n_best)
    sums = None  # the buffer of each step's candidate scores, made at the first
    for t in range(limit + 1):
        logp, attn, state = model.step(prev, state)  # (K, V), (K, src_len) or None
        if t < len(prefix):
            logp = force_tokens(logp, torch.full((K,), prefix[t], dtype=torch.long))
        if t >= limit:  # only </s> allowed
            logp = force_eos(logp, torch.ones(K, dtype=torch.bool))
        if sums is None:
            sums = candidate_sums(logp.numel())
        scores, beams, tokens = best_candidates(logp, torch.tensor(alive), 2 * K, sums)
        finished = _finish(finished, scores, beams, tokens, K, t, length_penalty, n_best)
        going = [j for j in range(2 * K) if tokens[j] != EOS_ID][:K]
        alive = [scores[j] for j in going]
        prev = torch.tensor([tokens[j] for j in going])
        back = torch.tensor([beams[j] for j in going])
        state = select_rows(state, back, shared)
        history.add(prev, back, attn, (scores, beams, tokens))
        if stop(finished, alive[0], t + 1, simple and tokens[0] == EOS_ID):
            break
    finished += [(NEG_INF, 0, 0)] * (n_best - len(finished))
    score, length, last = (torch.tensor([column]) for column in zip(*finished))  # (1, n_best) each
    return history.hypotheses(score, length, last, lengths)


def _finish(finished: list, scores: list, beams: list, tokens: list, K: int, t: int, length_penalty: float,
            n_best: int) -> list:
    """The n-best finished hypotheses once those ending in </s> among the K best candidates join
    (normalized in float32, as in ``beam_step``)."""
    ending = [j for j in range(K) if tokens[j] == EOS_ID]
    if not ending:
        return finished
    normalized = normalize(torch.tensor([scores[j] for j in ending]), t + 1, length_penalty).tolist()
    return sorted(finished + [(score, t, beams[j]) for score, j in zip(normalized, ending)], key=lambda f: -f[0])[:n_best]


class _StoppingRule:
    """``sentences_done`` for the one sentence, on float32 scalars as the batched search's tensors."""

    def __init__(self, limit: int, length_penalty: float, n_best: int):
        self.limit, self.n_best = limit, n_best
        self.best_case = np.float32(best_case(torch.tensor([limit]), length_penalty).item())

    def __call__(self, finished: list, best_open: float, steps: int, top_ended: bool = False) -> bool:
        if len(finished) < self.n_best and best_open != NEG_INF and steps <= self.limit and not top_ended:
            return False  # (it cannot hold: -inf beats no open hypothesis, and the limits are not reached)
        worst = finished[-1][0] if len(finished) == self.n_best else NEG_INF
        return bool(sentences_done(np.float32(worst), np.float32(best_open), self.best_case, steps, self.limit,
                                   self.limit + 1, top_ended))
