"""Greedy and beam search, vectorized over batch x beam.

Search talks to a model through two calls (``Seq2Seq`` implements them; the tests use a
scripted toy model):

* ``encode(src, lengths) -> state``: a dict of batch-first tensors;
* ``step(prev_tokens, state) -> (log_probs (rows, vocab), attention (rows, src_len) or None, state)``;
* optionally ``sentence_keys``: the state entries that hold one row per sentence, shared by
  its hypotheses (the encoder memory); ``step`` then gets ``beam`` rows of the other entries
  for each row of these, consecutive.

Every other state entry is reordered with ``index_select(0, rows)``, so a hypothesis keeps
its own decoder state when the beam is reordered.

Scores are length-normalized: ``sum log p / length ** alpha`` where the length counts the
end-of-sentence token. A sentence stops when its ``n_best`` finished hypotheses can no
longer be beaten by any open one under that normalization; sentences that stopped are
dropped from the batch. A lone sentence on a CPU (interactive use) takes a path of its own with
the same results, whose bookkeeping runs on Python numbers (``_beam_search_one``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nmt.vocabulary import BOS_ID, EOS_ID

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]  # without </s>
    score: float  # length-normalized log-probability
    attention: torch.Tensor | None  # (len(tokens), src_len) over the real source positions


def max_lengths(lengths: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Per-sentence output length limit (tokens before </s>), at least 1."""
    return (lengths.float() * a + b).floor().long().clamp(min=1)


def normalize(score: torch.Tensor, length, alpha: float) -> torch.Tensor:
    return score / (length ** alpha) if alpha else score


def select_rows(state: dict, rows: torch.Tensor, shared=(), sentences: torch.Tensor | None = None) -> dict:
    """Every hypothesis entry's ``rows``; the ``shared`` (per-sentence) entries stay as they
    are, or take their ``sentences`` rows when sentences are dropped."""
    out = {}
    for key, value in state.items():
        if key not in shared:
            out[key] = value.index_select(0, rows)
        else:
            out[key] = value if sentences is None else value.index_select(0, sentences)
    return out


@torch.inference_mode()
def greedy_search(model, src, lengths, max_len_a: float = 2.0, max_len_b: int = 10,
                  length_penalty: float = 0.0, check_every: int = 1) -> list[list[Hypothesis]]:
    """Most probable token at every step; the same as beam search with beam 1.

    ``check_every``: how often (steps) to check whether every sentence has ended (a device sync)."""
    state = model.encode(src, lengths)
    batch, device = src.size(0), src.device
    limit = max_lengths(lengths, max_len_a, max_len_b)
    shortest = int(limit.min())
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    score = torch.zeros(batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out_len = torch.zeros(batch, dtype=torch.long, device=device)
    tokens, attns = [], []
    for t in range(int(limit.max()) + 1):
        logp, attn, state = model.step(prev, state)
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
    toks = torch.stack(tokens, 1).tolist()  # (batch, steps)
    attn_all = torch.stack(attns, 1).float().cpu() if attns[0] is not None else None  # (batch, steps, src_len)
    out_len_l, lengths_l = out_len.tolist(), lengths.tolist()
    results = []
    for i in range(batch):
        n = out_len_l[i] - 1  # tokens before </s>
        att = attn_all[i, :n, : lengths_l[i]] if attn_all is not None else None
        results.append([Hypothesis(toks[i][:n], float(normalize(score[i], n + 1, length_penalty)), att)])
    return results


@torch.inference_mode()
def beam_search(model, src, lengths, beam_size: int = 5, n_best: int = 1, length_penalty: float = 0.0,
                max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search. Returns, per sentence, its ``n_best`` hypotheses, best first.

    ``check_every``: how often (steps) to look for finished sentences and drop them; each
    check synchronises with the device, so a GPU may prefer a few steps between checks.

    Hypotheses are not copied as they grow: every step records each open beam's token, the
    beam it extends and the attention rows, and a finished hypothesis is only a pointer
    (its last step, its last beam), followed back once at the end (``History.backtrack``).
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and the beam size")
    batch, device, K = src.size(0), src.device, beam_size
    limit_all = max_lengths(lengths, max_len_a, max_len_b)
    steps = int(limit_all.max()) + 1
    if batch == 1 and device.type == "cpu":
        return _beam_search_one(model, src, lengths, K, n_best, length_penalty, steps - 1)
    shared = getattr(model, "sentence_keys", ())
    state = select_rows(model.encode(src, lengths), torch.arange(batch, device=device).repeat_interleave(K), shared)

    # Results of sentences that stopped, by original position: score, length (= the step at
    # which </s> came) and the beam that </s> extended, numbered as at the step before.
    res_score = torch.full((batch, n_best), NEG_INF, device=device)
    res_len = torch.zeros((batch, n_best), dtype=torch.long, device=device)
    res_beam = torch.zeros((batch, n_best), dtype=torch.long, device=device)
    history = History()

    # The active sentences.
    active = torch.arange(batch, device=device)
    limit = limit_all
    shortest = int(limit.min())  # the first step at which some sentence must end
    alive_score = torch.full((batch, K), NEG_INF, device=device)
    alive_score[:, 0] = 0.0
    fin_score = torch.full((batch, n_best), NEG_INF, device=device)
    fin_len = torch.zeros((batch, n_best), dtype=torch.long, device=device)
    fin_beam = torch.zeros((batch, n_best), dtype=torch.long, device=device)
    prev = torch.full((batch * K,), BOS_ID, dtype=torch.long, device=device)

    for t in range(steps):
        rows = active.size(0)
        logp, attn, state = model.step(prev, state)  # (rows*K, V), (rows*K, src_len) or None
        if t >= shortest:  # past its limit a sentence may only end
            logp = force_eos(logp, (t >= limit).repeat_interleave(K))
        # (rows, 2K) best first: score, the beam row each candidate extends, its token
        top_score, flat_parent, token = beam_topk(logp, alive_score.view(-1), K, 2 * K)
        is_eos = token == EOS_ID

        # Candidates ending in </s> among the K best become finished hypotheses. (On the CPU,
        # skip the bookkeeping in the many steps without any; on a GPU that check would sync.)
        ending = is_eos[:, :K]  # (rows, K)
        if device.type != "cpu" or bool(ending.any()):
            new_fin = torch.where(ending, normalize(top_score[:, :K], t + 1, length_penalty), NEG_INF)
            fin_score, pick = torch.cat([fin_score, new_fin], dim=1).topk(n_best, dim=-1)  # of n_best + K
            fin_len = torch.cat([fin_len, torch.full((rows, K), t, device=device)], 1).gather(1, pick)
            fin_beam = torch.cat([fin_beam, flat_parent[:, :K]], 1).gather(1, pick)

        # The K best candidates that do not end continue.
        alive_score, keep = torch.where(is_eos, NEG_INF, top_score).topk(K, dim=-1)  # (rows, K)
        rows_sel = flat_parent.gather(1, keep).view(-1)  # (rows*K,)
        prev = token.gather(1, keep).view(-1)
        state = select_rows(state, rows_sel, shared)
        history.add(prev, rows_sel, attn)

        if (t + 1) % check_every and t + 1 < steps:
            continue
        # Stop a sentence once its n-best-th finished hypothesis beats every open one's best case.
        best_len = (limit + 1).float() if length_penalty > 0 else torch.full_like(limit, t + 2).float()
        bound = torch.where(alive_score[:, 0] > NEG_INF, alive_score[:, 0] / best_len ** length_penalty, NEG_INF)
        done = (fin_score[:, -1] >= bound) | (t + 1 > limit) | (t + 1 == steps)
        if not bool(done.any()):
            continue
        ids = active[done]
        res_score[ids], res_len[ids], res_beam[ids] = fin_score[done], fin_len[done], fin_beam[done]
        if bool(done.all()):
            break
        keep_rows = (~done).nonzero().squeeze(1)
        keep_beams = (keep_rows.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
        active, limit, alive_score = active[keep_rows], limit[keep_rows], alive_score[keep_rows]
        shortest = int(limit.min())
        fin_score, fin_len, fin_beam = fin_score[keep_rows], fin_len[keep_rows], fin_beam[keep_rows]
        state = select_rows(state, keep_beams, shared, sentences=keep_rows)
        prev = prev[keep_beams]
        history.keep(keep_beams)

    return results_from_history(history, res_score, res_len, res_beam, lengths)


def _beam_search_one(model, src, lengths, K: int, n_best: int, length_penalty: float,
                     limit: int) -> list[list[Hypothesis]]:
    """``beam_search`` of one sentence on a CPU (the interactive case): the same hypotheses and
    scores, but each step's 2K best candidates come to Python in one transfer and are sorted
    out there. A step of one sentence is mostly the overhead of its small tensor operations,
    and the batched bookkeeping takes a few dozen of them; here it takes about fifteen.
    ``limit``: the most tokens before </s>."""
    shared = getattr(model, "sentence_keys", ())
    state = select_rows(model.encode(src, lengths), torch.zeros(K, dtype=torch.long), shared)
    alive = [0.0] + [NEG_INF] * (K - 1)  # the open hypotheses' scores, best first
    prev = torch.full((K,), BOS_ID, dtype=torch.long)
    finished: list[tuple[float, int, int]] = []  # the n_best best: score, length, beam extended
    history = History()
    # The open hypotheses' best case is their score / best_len ** length_penalty, with best_len
    # the limit (+ </s>) under a penalty; without one, the divisor is 1 (as x ** 0 in beam_search).
    divisor = float(torch.tensor(float(limit + 1)) ** length_penalty) if length_penalty > 0 else 1.0
    sums = None  # the buffer of each step's candidate scores, made at the first
    for t in range(limit + 1):
        logp, attn, state = model.step(prev, state)  # (K, V), (K, src_len) or None
        if t >= limit:  # only </s> allowed
            logp = force_eos(logp, torch.ones(K, dtype=torch.bool))
        if sums is None:
            sums = _candidate_sums(logp.numel())
        scores, beams, tokens = _best_candidates(logp, torch.tensor(alive), 2 * K, sums)
        ending = [j for j in range(K) if tokens[j] == EOS_ID]  # among the K best, as in beam_search
        if ending:
            normalized = normalize(torch.tensor([scores[j] for j in ending]), t + 1, length_penalty).tolist()
            finished += [(score, t, beams[j]) for score, j in zip(normalized, ending)]
            finished = sorted(finished, key=lambda f: -f[0])[:n_best]
        going = [j for j in range(2 * K) if tokens[j] != EOS_ID][:K]
        alive = [scores[j] for j in going]
        prev = torch.tensor([tokens[j] for j in going])
        back = torch.tensor([beams[j] for j in going])
        state = select_rows(state, back, shared)
        history.add(prev, back, attn)
        if t == limit or _can_stop(finished, n_best, alive[0], divisor):
            break
    finished += [(NEG_INF, 0, 0)] * (n_best - len(finished))
    score, length, last = (torch.tensor([column]) for column in zip(*finished))  # (1, n_best) each
    return results_from_history(history, score, length, last, lengths)


def results_from_history(history: "History", score, length, last, src_lengths) -> list[list[Hypothesis]]:
    """The hypotheses of every sentence from its n-best finished ones: score, length (the step
    of their </s>) and the beam that </s> extended, (batch, n_best) each."""
    batch, n_best = score.shape
    tokens, attention = history.backtrack(length.view(-1), last.view(-1))  # (batch*n_best, steps[, src_len])
    steps = tokens.size(1)
    return _collect(score, tokens.view(batch, n_best, steps), length,
                    attention.view(batch, n_best, steps, -1) if attention is not None else None, src_lengths)


def _can_stop(finished: list, n_best: int, best_open: float, divisor: float) -> bool:
    """beam_search's stopping test for one sentence: its n-best-th finished hypothesis beats the
    best open one's best case, in float32 as there (a float32 quotient computed in float64 and
    rounded is the same)."""
    if best_open == NEG_INF:
        return True
    return len(finished) == n_best and finished[-1][0] >= float(np.float32(best_open / divisor))


def _candidate_sums(n: int) -> torch.Tensor:
    """A buffer for ``_best_candidates``: n sums, then -inf up to a whole number of blocks."""
    return torch.full((n + (-n % TOPK_BLOCK if TOPK_BLOCK else 0),), NEG_INF)


def _best_candidates(logp: torch.Tensor, offsets: torch.Tensor, k: int, sums: torch.Tensor) -> tuple[list, list, list]:
    """``beam_topk`` for one sentence, as Python lists: the k best ``offsets[r] + logp[r, v]``
    over its beams r and tokens v, best first: scores, beams, tokens.

    The sums are written once into ``sums`` (``_candidate_sums``), whose padding stays -inf, and
    cut into blocks of TOPK_BLOCK; the k best lie in the k blocks with the largest maxima."""
    vocab, n, block = logp.size(1), logp.numel(), TOPK_BLOCK
    torch.add(logp, offsets.unsqueeze(1), out=sums[:n].view_as(logp))
    if not block or n < 4 * k * block:
        top, index = sums[:n].topk(k)
        index_l = index.tolist()
    else:
        blocks = sums.view(-1, block)  # (n_blocks, block)
        best = blocks.amax(1).topk(k).indices  # (k,)
        top, pos = blocks[best].view(-1).topk(k)
        best_l = best.tolist()
        # (a padding position can only come with -inf, when fewer than k are possible: any valid one will do)
        index_l = [min(best_l[p // block] * block + p % block, n - 1) for p in pos.tolist()]
    return top.tolist(), [i // vocab for i in index_l], [i % vocab for i in index_l]


class History:
    """Per step of beam search: each open beam's token (beams,), the beam of the previous
    step it extends (beams,) and the attention rows of the previous step's beams (or None)."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []
        self.back: list[torch.Tensor] = []
        self.attn: list[torch.Tensor | None] = []

    def add(self, tokens, back, attn) -> None:
        self.tokens.append(tokens)
        self.back.append(back)
        self.attn.append(attn)

    def keep(self, beams: torch.Tensor) -> None:
        """Renumber the last step's beams after dropping sentences."""
        self.tokens[-1], self.back[-1] = self.tokens[-1][beams], self.back[-1][beams]

    def backtrack(self, length: torch.Tensor, last: torch.Tensor):
        """Tokens (n, steps) and attention (n, steps, src_len) or None of n hypotheses that end
        (with </s>) at step ``length`` (n,), extending beam ``last`` (n,) of the step before;
        zeros past each hypothesis' length.

        The pointers are followed on Python ints (one transfer from the device), then the
        attention rows of all steps are taken with one indexing."""
        steps, n, device = len(self.tokens), length.size(0), length.device
        tok_start, attn_start = _offsets(self.tokens), _offsets(self.attn) if self.attn[0] is not None else None
        tokens_l, back_l = torch.stack([torch.cat(self.tokens), torch.cat(self.back)]).tolist()
        out = [[0] * steps for _ in range(n)]
        rows = [[-1] * steps for _ in range(n)]  # each token's row in the stacked attention; -1: none
        for i, (end, beam) in enumerate(zip(length.tolist(), last.tolist())):
            for s in range(end - 1, -1, -1):  # a hypothesis' last token is at step end - 1
                out[i][s] = tokens_l[tok_start[s] + beam]
                beam = back_l[tok_start[s] + beam]  # the beam it extends: a row of step s's input
                if attn_start is not None:
                    rows[i][s] = attn_start[s] + beam
        tokens = torch.tensor(out, dtype=torch.long, device=device)  # (n, steps)
        if attn_start is None:
            return tokens, None
        stacked = torch.cat(self.attn + [self.attn[0].new_zeros(1, self.attn[0].size(1))])  # (all rows + 1, src_len)
        index = torch.tensor([r for hyp in rows for r in hyp], device=device)  # -1: the zero row
        return tokens, stacked[index].view(n, steps, -1).float()


def _offsets(tensors: list[torch.Tensor]) -> list[int]:
    """Where each tensor's rows start once they are concatenated."""
    starts = [0]
    for t in tensors[:-1]:
        starts.append(starts[-1] + t.size(0))
    return starts


TOPK_BLOCK = 32  # columns per block in beam_topk's first pass (0: one plain topk)


def beam_topk(logp: torch.Tensor, offsets: torch.Tensor, beam: int, k: int,
              block: int | None = None) -> tuple[torch.Tensor, ...]:
    """The k best candidates ``offsets[r] + logp[r, v]`` of every sentence, over its ``beam``
    consecutive rows r of ``logp`` (rows, vocab) and all tokens v; ``offsets`` (rows,) are the
    beams' scores. Returns scores, rows and tokens, each (rows // beam, k), best first.

    Two passes over ``logp`` and no (rows, vocab) temporary: the k best lie in the k blocks
    (of TOPK_BLOCK columns) whose maxima plus offsets are largest, so take the blocks' maxima,
    then the top k of those blocks' values. On a CPU this reads the wide array once, where
    adding the offsets and one ``topk`` over (beam x vocabulary) read and write it several
    times and a ``topk`` over one wide row is slow. The same values as that plain ``topk`` and,
    barring ties, the same candidates (where a sentence has fewer than k candidates above
    -inf, those of its -inf scores are arbitrary valid ones)."""
    n, vocab = logp.shape
    sentences, block = n // beam, TOPK_BLOCK if block is None else block
    first_row = torch.arange(sentences, device=logp.device).unsqueeze(1) * beam  # (sentences, 1)
    if not block or vocab < 4 * k * block:
        cand = (offsets.unsqueeze(1) + logp).view(sentences, beam * vocab)
        top, idx = cand.topk(k, dim=-1)
        return top, first_row + idx // vocab, idx % vocab
    whole = vocab - vocab % block
    maxima = logp[:, :whole].unflatten(1, (whole // block, block)).amax(-1)  # (rows, blocks)
    if whole < vocab:
        maxima = torch.cat([maxima, logp[:, whole:].amax(-1, keepdim=True)], 1)  # the short last block
    n_blocks = maxima.size(1)
    _, best = (maxima + offsets.unsqueeze(1)).view(sentences, beam * n_blocks).topk(k, dim=-1)
    rows = first_row + best // n_blocks  # (sentences, k) the row of each best block
    cols = ((best % n_blocks).unsqueeze(-1) * block + torch.arange(block, device=logp.device)).view(sentences, -1)
    rows = rows.repeat_interleave(block, dim=1)  # (sentences, k * block), like cols
    values = logp.view(-1)[rows * vocab + cols.clamp(max=vocab - 1)] + offsets[rows]
    if whole < vocab:
        values = values.masked_fill(cols >= vocab, NEG_INF)
    top, pos = values.topk(k, dim=-1)
    return top, rows.gather(1, pos), cols.gather(1, pos).clamp(max=vocab - 1)


def force_eos(logp: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """logp (n, vocab) with every token but </s> impossible in the rows where ``rows`` (n,) is True."""
    others = torch.arange(logp.size(1), device=logp.device) != EOS_ID
    return logp.masked_fill(rows.unsqueeze(1) & others, NEG_INF)


def _collect(score, tok, length, attn, src_lengths) -> list[list[Hypothesis]]:
    score_l, tok_l, len_l, src_len_l = score.tolist(), tok.tolist(), length.tolist(), src_lengths.tolist()
    attn = attn.float().cpu() if attn is not None else None  # (one transfer from a GPU, not one per hypothesis)
    out = []
    for i in range(len(score_l)):
        hyps = []
        for j, s in enumerate(score_l[i]):
            if s == NEG_INF or math.isnan(s):
                continue
            n = len_l[i][j]
            att = attn[i, j, :n, : src_len_l[i]] if attn is not None else None
            hyps.append(Hypothesis(tok_l[i][j][:n], s, att))
        out.append(hyps)
    return out
