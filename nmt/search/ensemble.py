"""Ensemble decoding: several models of the same vocabularies searched as one.

At every step the ensemble's next-word distribution is the mean of its members' (seq2seq-attn
and OpenNMT-py average probabilities, not log-probabilities):

    p(y_t | y_<t, x) = 1/M sum_m p_m(y_t | y_<t, x)

and its attention is the mean of the members' attention (over those that have attention).
The ensemble implements the search interface (``encode``, ``step``, ``sentence_keys``;
``nmt.search.core``) and teacher forcing (``forward``, for scoring), so every search driver
and engine takes it as it takes one model. Each member's decoding state lives in the one
state dict under its own prefix (``"0.h"``, ``"1.h"``, ...), so search reorders all of them with
its usual ``index_select``.
"""

from __future__ import annotations

import math

import torch


class Ensemble:
    """Members: models with the search interface (a ``Seq2Seq``, its int8 copy or trace)."""

    def __init__(self, members: list):
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        self.members = list(members)
        self.sentence_keys = tuple(f"{i}.{k}" for i, m in enumerate(members) for k in getattr(m, "sentence_keys", ()))
        self.log_m = math.log(len(members))
        self.cfg = getattr(members[0], "cfg", None)  # (the first member's: the members share vocabularies)

    @property
    def has_attention(self) -> bool:
        return any(_has_attention(m) for m in self.members)

    @property
    def training(self) -> bool:
        return any(getattr(m, "training", False) for m in self.members)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> dict:
        state = {}
        for i, member in enumerate(self.members):
            state.update({f"{i}.{k}": v for k, v in member.encode(src, lengths).items()})
        return state

    def step(self, tokens: torch.Tensor, state: dict):
        """Previous tokens (rows,) -> the mean distribution's log-probs (rows, vocab), the mean
        attention (rows, src_len) or None, and the new state."""
        logps, attns, new = [], [], {}
        for i, member in enumerate(self.members):
            logp, attn, own = member.step(tokens, self._own(state, i))
            logps.append(logp)
            attns.append(attn)
            new.update({f"{i}.{k}": v for k, v in own.items()})
        return self._mean_log_probs(logps), _mean_attention(attns), new

    def forward(self, src, src_lengths, tgt_in):
        """Teacher forcing: the mean distribution's log-probs (batch, tgt_len, vocab) (a softmax of
        them gives them back) and the mean attention (batch, tgt_len, src_len) or None."""
        outs = [member(src, src_lengths, tgt_in) for member in self.members]
        logps = [torch.log_softmax(logits.float(), -1) for logits, _ in outs]
        return self._mean_log_probs(logps), _mean_attention([attn for _, attn in outs])

    __call__ = forward

    def _own(self, state: dict, i: int) -> dict:
        prefix = f"{i}."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def _mean_log_probs(self, logps: list[torch.Tensor]) -> torch.Tensor:
        return torch.logsumexp(torch.stack(logps), dim=0) - self.log_m  # log of the mean probability


def _has_attention(model) -> bool:
    return bool(getattr(model, "has_attention", getattr(getattr(model, "model", None), "has_attention", False)))


def _mean_attention(attns: list) -> torch.Tensor | None:
    present = [a for a in attns if a is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else torch.stack(present).mean(0)
