"""Global attention (Luong et al. 2015): dot, general, concat (Bahdanau/MLP) or none."""

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
        """(batch, query_size) x (batch, src_len, query_size) -> (batch, src_len)."""
        if self.kind == "concat":
            hidden = torch.tanh(keys + self.linear_query(query).unsqueeze(1))
            return self.v(hidden).squeeze(-1)
        return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)

    def forward(self, query, memory, keys, mask):
        """query (batch, hidden); memory (batch, src_len, mem); mask (batch, src_len) True = real token."""
        scores = self.scores(query, keys).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (batch, src_len)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (batch, mem)
        output = torch.tanh(self.linear_out(torch.cat([context, query], dim=-1)))
        return output, weights
