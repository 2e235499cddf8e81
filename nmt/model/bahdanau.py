"""The decoder in Bahdanau et al. (2015)'s order: attend from the previous state, then step the RNN.

At step t, with y_{t-1} the previous target word's embedding and s_{t-1} the previous state of the
decoder's top layer:

    a_t(s) = softmax_s score(s_{t-1}, h_s)         eq. 6 (e_ij = a(s_{i-1}, h_j); the kinds of nmt.attention)
    c_t    = sum_s a_t(s) h_s                      eq. 5
    s_t    = RNN([y_{t-1}; c_t], s_{t-1})          section 3.1, s_i = f(s_{i-1}, y_{i-1}, c_i): the context
                                                   is in the RNN's input (stacked layers: the first's)
    o_t    = tanh(W_o [c_t; s_t])                  eq. 4's g reads s_t and c_t (a tanh layer in place of
                                                   the paper's maxout, as the Practical PyTorch tutorial)
    p(y_t | y_<t, x) = softmax(W_s o_t)            the model's generator

Luong's input feeding (nmt.model.decoders) attends after the RNN instead and feeds h~_t to the next
step; here nothing but the RNN state carries over (``--input-feed`` is ignored). The state is the
Luong decoder's without ``feed``, and ``step``/``forward`` have its interface, so search, tracing
and extraction run either decoder unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.attention import GlobalAttention
from nmt.model.decoders import State, teacher_forced
from nmt.model.dropout import Dropout
from nmt.model.embeddings import WordEmbeddings
from nmt.model.rnn import make_cells, new_state, run_stack


class BahdanauDecoder(nn.Module):
    def __init__(self, embeddings: WordEmbeddings, hidden: int, layers: int, attention: str,
                 memory_size: int, dropout: float, rnn_type: str = "lstm", res_net: bool = False):
        super().__init__()
        if attention == "none":
            raise ValueError("the Bahdanau decoder needs an attention kind (dot, general or concat)")
        self.embeddings = embeddings
        self.cells = make_cells(rnn_type, embeddings.output_size + memory_size, hidden, layers)
        self.attention = GlobalAttention(attention, hidden, memory_size)  # its linear_out is W_o
        self.dropout = Dropout(dropout)
        self.hidden, self.rnn_type, self.res_net = hidden, rnn_type, res_net

    def init_state(self, memory, mask, h, c=None) -> State:
        """h, c: (batch, layers, hidden) initial states s_0 (c None for a GRU)."""
        state = {"h": h} if c is None else {"h": h, "c": c}
        state.update(memory=memory, keys=self.attention.keys(memory), mask=mask)
        return state

    def step(self, emb: torch.Tensor, state: State):
        """One step from embedded input (rows, emb). Returns o_t (rows, hidden), the attention
        a_t (rows, src_len) and the new state."""
        s_prev = state["h"][:, -1]  # (rows, hidden) the top layer's s_{t-1}
        context, attn = self.attention.context(s_prev, state["memory"], state["keys"], state["mask"])  # (rows, mem)
        top, hs, cs = run_stack(self.cells, torch.cat([emb, context], -1), state, self.dropout, self.res_net)
        out = self.dropout(self.attention.attentional_state(context, top))  # (rows, hidden)
        return out, attn, new_state(state, hs, cs)

    def forward(self, tgt_in: torch.Tensor, state: State):
        """Teacher-forced decoding of (batch, tgt_len): outputs (batch, tgt_len, hidden), attention
        (batch, tgt_len, src_len)."""
        return teacher_forced(self, tgt_in, state)
