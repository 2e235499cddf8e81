"""The record of a beam search, from which its hypotheses are rebuilt at the end.

Hypotheses are not copied as they grow: every step records each open beam's token, the beam it
extends and the attention rows, and a finished hypothesis is only a pointer (its last step, its
last beam), followed back once at the end (``History.backtrack``).
"""

from __future__ import annotations

import math

import torch

from nmt.search.core import NEG_INF, Hypothesis


class History:
    """Per step of beam search: each open beam's token (beams,), the beam of the previous
    step it extends (beams,), the attention rows of the previous step's beams (or None), and the
    candidates the step chose from (each sentence's 2K best: scores, the rows they extend, tokens;
    tensors (sentences, 2K), or lists for a lone sentence), from which the whole search can be
    drawn (a beam tree). Recording them costs nothing: they are the step's own results."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []
        self.back: list[torch.Tensor] = []
        self.attn: list[torch.Tensor | None] = []
        self.candidates: list[tuple] = []

    def add(self, tokens, back, attn, candidates: tuple = ()) -> None:
        self.tokens.append(tokens)
        self.back.append(back)
        self.attn.append(attn)
        self.candidates.append(candidates)

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

    def hypotheses(self, score, length, last, src_lengths) -> list[list[Hypothesis]]:
        """Every sentence's hypotheses from its n-best finished ones: score, length (the step of
        their </s>) and the beam that </s> extended, (batch, n_best) each."""
        batch, n_best = score.shape
        tokens, attention = self.backtrack(length.view(-1), last.view(-1))  # (batch*n_best, steps[, src_len])
        steps = tokens.size(1)
        return _collect(score, tokens.view(batch, n_best, steps), length,
                        attention.view(batch, n_best, steps, -1) if attention is not None else None, src_lengths)


def _offsets(tensors: list[torch.Tensor]) -> list[int]:
    """Where each tensor's rows start once they are concatenated."""
    starts = [0]
    for t in tensors[:-1]:
        starts.append(starts[-1] + t.size(0))
    return starts


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
