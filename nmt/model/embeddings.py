"""Input layers: map token ids to vectors.

Each input layer is a module with ``forward(tokens) -> (batch, len, output_size)`` and an
``output_size`` attribute, so the encoder and decoder do not care what the input is.
Character-level inputs (char-CNN + highway) or source word features slot in here.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.dropout import Dropout
from nmt.vocabulary import PAD_ID


class WordEmbeddings(nn.Module):
    """Word embeddings followed by dropout."""

    def __init__(self, vocab_size: int, emb_size: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=PAD_ID)
        self.dropout = Dropout(dropout)
        self.output_size = emb_size

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(tokens))
