"""Global attention (Luong et al. 2015, section 3.1): dot, general or concat (Bahdanau et al. 2015).

With h_t the decoder's top hidden state (the query, of the decoder's size) and h_s the encoder's
output at source position s (of the encoder's size; general and concat map it to the query's size,
dot needs the two sizes equal):

    score(h_t, h_s) = h_t . h_s                        dot      (Luong eq. 8)
                    = h_t . W_a h_s                    general  (Luong eq. 8)
                    = v_a . tanh(W_a h_s + U_a h_t + b)  concat   (Bahdanau et al., Luong eq. 8)
    a_t(s) = softmax_s score(h_t, h_s)                          (Luong eq. 7)
    c_t    = sum_s a_t(s) h_s                                   (the context vector)
    h~_t   = tanh(W_c [c_t; h_t])                               (Luong eq. 5, the attentional hidden state)

The source side of the score (W_a h_s, or h_s for dot) is the same at every step: ``keys``
computes it once per sentence.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalAttention(nn.Module):
    """Scores the decoder state against every source position and mixes the memory.

    ``keys(memory)`` is computed once per sentence; ``forward`` runs at every decoder step
    and returns the attentional hidden state tanh(W_c [context; h]) and the weights.
    """

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        if kind not in ("dot", "general", "concat"):
            raise ValueError(f"unknown attention kind {kind!r}")
        if kind == "dot" and query_size != memory_size:
            raise ValueError("dot attention needs the decoder and encoder sizes to match")
        self.kind = kind
        if kind == "general":
            self.linear_in = nn.Linear(memory_size, query_size, bias=False)
        elif kind == "concat":
            self.linear_key = nn.Linear(memory_size, query_size, bias=False)
            self.linear_query = nn.Linear(query_size, query_size, bias=True)
            self.v = nn.Linear(query_size, 1, bias=False)
        self.linear_out = nn.Linear(memory_size + query_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Precomputed source side of the score: (batch, src_len, query_size)."""
        if self.kind == "general":
            return self.linear_in(memory)
        if self.kind == "concat":
            return self.linear_key(memory)
        return memory

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(batch, k, query_size) x (batch, src_len, query_size) -> (batch, k, src_len)."""
        if self.kind == "concat":
            hidden = torch.tanh(keys.unsqueeze(1) + self.linear_query(query).unsqueeze(2))  # (batch, k, src_len, q)
            return self.v(hidden).squeeze(-1)
        return torch.bmm(query, keys.transpose(1, 2))

    def forward(self, query, memory, keys, mask):
        """query (rows, hidden), with rows = k consecutive queries (hypotheses) per sentence;
        memory (batch, src_len, mem); mask (batch, src_len) True = real token.
        Returns the attentional hidden state h~_t (rows, hidden) and the weights a_t (rows, src_len)."""
        batch, src_len = mask.shape
        q = query.view(batch, -1, query.size(-1))  # (batch, k, hidden)
        context, weights = self.attend(q, memory, keys, mask)
        return self.attentional_state(context, q).view(query.shape), weights.view(-1, src_len)

    def context(self, query, memory, keys, mask):
        """The context c_t (rows, mem) and the weights a_t (rows, src_len) alone, for a decoder that
        combines c_t with another state than the query (Bahdanau's: nmt.model.bahdanau)."""
        batch, src_len = mask.shape
        context, weights = self.attend(query.view(batch, -1, query.size(-1)), memory, keys, mask)
        return context.view(query.size(0), -1), weights.view(-1, src_len)

    def attend(self, q, memory, keys, mask):
        """Luong eq. 7 and the context: q (batch, k, query_size) -> c_t (batch, k, mem), a_t (batch, k, src_len)."""
        scores = self.scores(q, keys).masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (batch, k, src_len)
        return torch.bmm(weights, memory), weights  # (batch, k, mem)

    def attentional_state(self, context: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """h~_t = tanh(W_c [c_t; h_t]) from the context (..., mem) and the queries (..., hidden)."""
        return torch.tanh(self.linear_out(torch.cat([context, q], dim=-1)))
