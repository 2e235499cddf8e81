"""The LSTM encoder (optionally bidirectional, optionally reading the source reversed)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.embeddings import WordEmbeddings


def reverse_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) positions that reverse each row's first ``length`` items, keep padding."""
    pos = torch.arange(width, device=lengths.device).unsqueeze(0)  # (1, width)
    rev = lengths.unsqueeze(1) - 1 - pos
    return torch.where(rev >= 0, rev, pos)


class LSTMEncoder(nn.Module):
    """Embeds and encodes a padded source batch.

    Returns the memory (batch, src_len, hidden) aligned with the source positions (also
    with ``reverse_src``) and the final states h, c as (layers, batch, hidden), the two
    directions of a bi-LSTM concatenated.
    """

    def __init__(self, embeddings: WordEmbeddings, hidden: int, layers: int, brnn: bool,
                 dropout: float, reverse_src: bool = False):
        super().__init__()
        self.embeddings = embeddings
        self.brnn, self.layers, self.reverse_src = brnn, layers, reverse_src
        self.rnn = nn.LSTM(embeddings.output_size, hidden // 2 if brnn else hidden, num_layers=layers,
                           bidirectional=brnn, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.output_size = hidden

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        if self.reverse_src:
            idx = reverse_index(lengths, src.size(1))
            src = src.gather(1, idx)
        emb = self.embeddings(src)  # (batch, src_len, emb)
        lengths = lengths.cpu()
        if bool((lengths == src.size(1)).all()):  # no padding (one sentence, say): packing would only
            memory, (h, c) = self.rnn(emb)       # cost time there, with the same results
        else:
            packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
            out, (h, c) = self.rnn(packed)
            memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.reverse_src:
            memory = memory.gather(1, idx.unsqueeze(-1).expand_as(memory))
        if self.brnn:  # (layers*2, batch, hidden/2) -> (layers, batch, hidden)
            h = torch.cat([h[0::2], h[1::2]], dim=-1)
            c = torch.cat([c[0::2], c[1::2]], dim=-1)
        return memory, (h, c)
