"""Eager search drivers: batched beam search around the core (sentences that stopped leave the
batch), a lone sentence on a CPU through ``nmt.search.single``, and greedy search."""

from __future__ import annotations

import torch

from nmt.search.core import (NEG_INF, Beams, Hypothesis, beam_step, force_eos, force_tokens, max_lengths, normalize,
                             sentences_done)
from nmt.search.history import History
from nmt.search.single import beam_search_one
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID


@torch.inference_mode()
def beam_search(model, src, lengths, beam_size: int = 5, n_best: int = 1, length_penalty: float = 0.0,
                max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 1,
                history: History | None = None, forced: torch.Tensor | None = None,
                simple: bool = False) -> list[list[Hypothesis]]:
    """Batched beam search. Returns, per sentence, its ``n_best`` hypotheses, best first.

    ``check_every``: how often (steps) to look for finished sentences and drop them; each
    check synchronises with the device, so a GPU may prefer a few steps between checks.
    ``history``: an empty ``History`` to keep the search's record in (see there).
    ``forced``: (batch, P) prefixes each sentence's hypotheses begin with (``nmt.search.core.forced_tokens``).
    ``simple``: stop a sentence as soon as the best candidate of a step ends (``sentences_done``);
    every step is then checked."""
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and the beam size")
    batch, device = src.size(0), src.device
    steps = int(max_lengths(lengths, max_len_a, max_len_b, forced).max()) + 1
    history = History() if history is None else history
    if batch == 1 and device.type == "cpu":
        prefix = [] if forced is None else [t for t in forced[0].tolist() if t != PAD_ID]
        return beam_search_one(model, src, lengths, beam_size, n_best, length_penalty, steps - 1, history, prefix,
                               simple)
    check_every = 1 if simple else check_every  # (the step a top candidate ends is the step it stops)
    beams = Beams.start(model, model.encode(src, lengths), lengths, beam_size, n_best, length_penalty,
                        max_len_a, max_len_b, forced)
    results = _Results(batch, n_best, device)  # of the sentences that stopped, by original position
    active = torch.arange(batch, device=device)
    for t in range(steps):
        step = beam_step(model, beams, t, (t + 1) ** length_penalty, eager=True)
        _advance(beams, step)
        history.add(step.prev, step.rows, step.attn, step.candidates)
        if (t + 1) % check_every and t + 1 < steps:
            continue
        top_ended = simple and step.candidates[2][:, 0] == EOS_ID
        done = sentences_done(beams.fin_score[:, -1], beams.alive[:, 0], beams.best_case, t + 1, beams.limit, steps,
                              top_ended)
        if not bool(done.any()):
            continue
        results.record(active[done], beams, done)
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        active = active[keep]
        history.keep(_drop(beams, keep))
    return history.hypotheses(results.score, results.length, results.beam, lengths)


def _advance(beams: Beams, step) -> None:
    beams.prev, beams.state, beams.alive = step.prev, step.state, step.alive
    beams.fin_score, beams.fin_len, beams.fin_beam = step.fin_score, step.fin_len, step.fin_beam


def _drop(beams: Beams, keep: torch.Tensor) -> torch.Tensor:
    """Keep only the sentences ``keep`` (indices into the batch); returns their hypotheses' rows."""
    K = beams.K
    rows = (keep.unsqueeze(1) * K + torch.arange(K, device=keep.device)).view(-1)
    beams.state = {k: v.index_select(0, keep if k in beams.shared else rows) for k, v in beams.state.items()}
    beams.prev, beams.alive, beams.limit, beams.best_case = beams.prev[rows], beams.alive[keep], beams.limit[keep], \
        beams.best_case[keep]
    beams.fin_score, beams.fin_len, beams.fin_beam = beams.fin_score[keep], beams.fin_len[keep], beams.fin_beam[keep]
    beams.forced = beams.forced[keep] if beams.forced is not None else None
    beams.shortest = int(beams.limit.min())
    return rows


class _Results:
    """The finished hypotheses of the sentences that stopped, by their position in the batch."""

    def __init__(self, batch: int, n_best: int, device):
        self.score = torch.full((batch, n_best), NEG_INF, device=device)
        self.length = torch.zeros((batch, n_best), dtype=torch.long, device=device)
        self.beam = torch.zeros((batch, n_best), dtype=torch.long, device=device)

    def record(self, ids: torch.Tensor, beams: Beams, done: torch.Tensor) -> None:
        self.score[ids], self.length[ids], self.beam[ids] = beams.fin_score[done], beams.fin_len[done], beams.fin_beam[done]


@torch.inference_mode()
def greedy_search(model, src, lengths, max_len_a: float = 2.0, max_len_b: int = 10,
                  length_penalty: float = 0.0, check_every: int = 1,
                  forced: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Most probable token at every step; the same as beam search with beam 1 (without a length
    penalty; with one, beam 1 may go on past a finished hypothesis to a longer, better one).

    ``check_every``: how often (steps) to check whether every sentence has ended (a device sync).
    ``forced``: (batch, P) prefixes, as in ``beam_search``."""
    state = model.encode(src, lengths)
    batch, device = src.size(0), src.device
    limit = max_lengths(lengths, max_len_a, max_len_b, forced)
    shortest = int(limit.min())
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    score = torch.zeros(batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out_len = torch.zeros(batch, dtype=torch.long, device=device)
    tokens, attns = [], []
    for t in range(int(limit.max()) + 1):
        logp, attn, state = model.step(prev, state)
        if forced is not None and t < forced.size(1):
            logp = force_tokens(logp, forced[:, t])
        if t >= shortest:  # only </s> allowed past a sentence's limit
            logp = force_eos(logp, t >= limit)
        best_logp, prev = logp.max(dim=-1)
        score = torch.where(finished, score, score + best_logp)
        out_len = torch.where(finished, out_len, out_len + 1)
        finished = finished | (prev == EOS_ID)
        tokens.append(prev)
        attns.append(attn)
        if (t + 1) % check_every == 0 and bool(finished.all()):
            break
    return _greedy_hypotheses(torch.stack(tokens, 1), attns, score, out_len, lengths, length_penalty)


def _greedy_hypotheses(tokens, attns, score, out_len, lengths, length_penalty) -> list[list[Hypothesis]]:
    toks = tokens.tolist()  # (batch, steps)
    attn_all = torch.stack(attns, 1).float().cpu() if attns[0] is not None else None  # (batch, steps, src_len)
    out_len_l, lengths_l = out_len.tolist(), lengths.tolist()
    results = []
    for i in range(len(toks)):
        n = out_len_l[i] - 1  # tokens before </s>
        att = attn_all[i, :n, : lengths_l[i]] if attn_all is not None else None
        results.append([Hypothesis(toks[i][:n], float(normalize(score[i], n + 1, length_penalty)), att)])
    return results
