"""The RNN encoder: LSTM or GRU, optionally bidirectional, residual, reading the source reversed.

A bidirectional encoder joins its two directions at every layer, h_s = [->h_s; <-h_s] (``concat``:
each direction has half the encoder size, Luong et al. 2015's setting) or h_s = ->h_s + <-h_s
(``sum``: each has the full size, seq2seq-attn's -brnn_merge sum). With ``res_net`` the input of
every layer above the first is added to its output (nmt.model.rnn).

Without those two (concat, no residual), the layers are one stacked ``nn.LSTM``/``nn.GRU`` (``rnn``,
cuDNN's single call on a GPU; the checkpoints' ``encoder.rnn.*_l{k}`` weights); otherwise they are
one module per layer (``layers_rnn``), joined and added between the layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.dropout import Dropout
from nmt.model.embeddings import WordEmbeddings
from nmt.model.rnn import RNNS
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID


def reverse_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) positions that reverse each row's first ``length`` items, keep padding."""
    pos = torch.arange(width, device=lengths.device).unsqueeze(0)  # (1, width)
    rev = lengths.unsqueeze(1) - 1 - pos
    return torch.where(rev >= 0, rev, pos)


class RNNEncoder(nn.Module):
    """Embeds and encodes a padded source batch.

    Returns the memory (batch, src_len, size) aligned with the source positions (also with
    ``reverse_src``) and the final states h, c as (layers, batch, size), the two directions of a
    bidirectional encoder joined (c is None for a GRU).
    """

    def __init__(self, embeddings: WordEmbeddings, hidden: int, layers: int, brnn: bool,
                 dropout: float, reverse_src: bool = False, rnn_type: str = "lstm",
                 brnn_merge: str = "concat", res_net: bool = False, start_symbol: bool = False):
        super().__init__()
        self.embeddings, self.start_symbol = embeddings, start_symbol
        self.brnn, self.layers, self.reverse_src = brnn, layers, reverse_src
        self.rnn_type, self.merge, self.res_net = rnn_type, brnn_merge if brnn else "concat", res_net
        rnn, size = RNNS[rnn_type], hidden // 2 if brnn and self.merge == "concat" else hidden
        if self.merge == "concat" and not res_net:
            self.rnn = rnn(embeddings.output_size, size, num_layers=layers, bidirectional=brnn, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        else:
            self.layers_rnn = nn.ModuleList(rnn(embeddings.output_size if k == 0 else hidden, size,
                                                bidirectional=brnn, batch_first=True) for k in range(layers))
            self.dropout = Dropout(dropout)
        self.output_size = hidden

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        width = src.size(1)
        src, lengths = self._bounded(src, lengths)
        idx = reverse_index(lengths, src.size(1)) if self.reverse_src else None  # (batch, src_len)
        emb = self.embeddings(_aligned(src, idx))  # (batch, src_len, emb); reversed: the same gather undoes it
        if hasattr(self, "rnn"):
            memory, final = _run(self.rnn, emb, lengths.cpu())
            h, c = (final, None) if self.rnn_type == "gru" else final
            h, c = self._join_final(h), None if c is None else self._join_final(c)
        else:
            outputs, h, c = self._run_layers(emb, lengths.cpu(), train=True)
            memory = outputs[-1]
        return self._words(_aligned(memory, idx), width), (h, c)

    def layer_outputs(self, src: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output (batch, src_len, size), aligned with the source positions, the last
        being the memory (in eval mode: a stacked ``rnn``'s dropout between layers is not applied)."""
        width = src.size(1)
        src, lengths = self._bounded(src, lengths)
        idx = reverse_index(lengths, src.size(1)) if self.reverse_src else None
        emb = self.embeddings(_aligned(src, idx))
        outputs, _, _ = self._run_layers(emb, lengths.cpu(), train=not hasattr(self, "rnn"))
        return [self._words(_aligned(x, idx), width) for x in outputs]

    def _bounded(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``start_symbol`` (seq2seq-attn): each source read as <s> w1 .. wn </s>, (batch, src_len + 2)."""
        if not self.start_symbol:
            return src, lengths
        out = nn.functional.pad(src, (1, 1), value=PAD_ID)
        out[:, 0] = BOS_ID
        return out.scatter(1, (lengths + 1).unsqueeze(1), EOS_ID), lengths + 2

    def _words(self, states: torch.Tensor, width: int) -> torch.Tensor:
        """The states of the source words (batch, src_len, size): the boundaries are read, not attended to."""
        return states[:, 1:width + 1] if self.start_symbol else states

    def _run_layers(self, x: torch.Tensor, lengths: torch.Tensor, train: bool):
        """The layers one at a time over x (batch, src_len, emb): each layer's output, the final
        h and c (layers, batch, size) (c None for a GRU). ``train``: apply the dropout between layers."""
        outputs, hs, cs = [], [], []
        for k in range(self.layers):
            if k > 0 and train:
                x = self.dropout(x)
            out, final = _run(self._layer(k), x, lengths)  # (batch, src_len, size)
            h, c = (final, None) if self.rnn_type == "gru" else final
            out = self._join_outputs(out)
            x = out + x if self.res_net and k > 0 else out  # residual: the layer's input added to its output
            outputs.append(x)
            hs.append(self._join_final(h))
            cs.append(None if c is None else self._join_final(c))
        h = torch.cat(hs, 0)
        return outputs, h, None if cs[0] is None else torch.cat(cs, 0)

    def _layer(self, k: int) -> nn.Module:
        """Layer k's module: its own, or a one-layer copy of the stacked ``rnn``'s weights."""
        if not hasattr(self, "rnn"):
            return self.layers_rnn[k]
        rnn = self.rnn
        one = type(rnn)(rnn.input_size if k == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1),
                        rnn.hidden_size, batch_first=True, bidirectional=rnn.bidirectional,
                        device=rnn.weight_ih_l0.device, dtype=rnn.weight_ih_l0.dtype)
        names = [n for n, _ in one.named_parameters()]  # weight_ih_l0, ..., bias_hh_l0_reverse
        one.load_state_dict({n: getattr(rnn, n.replace("_l0", f"_l{k}")) for n in names})
        return one.train(self.training)

    def _join_outputs(self, out: torch.Tensor) -> torch.Tensor:
        """(batch, src_len, dirs * size) -> the encoder's (batch, src_len, hidden)."""
        if self.brnn and self.merge == "sum":
            forward, backward = out.chunk(2, -1)
            return forward + backward
        return out  # (concat: nn.LSTM's output is [forward; backward] already)

    def _join_final(self, h: torch.Tensor) -> torch.Tensor:
        """(layers * dirs, batch, size) -> (layers, batch, hidden)."""
        if not self.brnn:
            return h
        return h[0::2] + h[1::2] if self.merge == "sum" else torch.cat([h[0::2], h[1::2]], dim=-1)


def _run(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    """``rnn`` over the padded batch x (batch, width, in) of these (CPU) lengths: its outputs
    (batch, width, dirs * size), zero at padding, and its final state."""
    width = x.size(1)
    if bool((lengths == width).all()):  # no padding (one sentence, say): packing would only
        return rnn(x)                   # cost time there, with the same results
    out, final = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return pad_packed_sequence(out, batch_first=True, total_length=width)[0], final


def _aligned(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """x (batch, src_len) or (batch, src_len, size) with its positions permuted by ``idx`` (batch,
    src_len): reversed, or back in source order after reading it reversed (a reversal is its own inverse)."""
    if idx is None:
        return x
    return x.gather(1, idx if x.dim() == 2 else idx.unsqueeze(-1).expand_as(x))
