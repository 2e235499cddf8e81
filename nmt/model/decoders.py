"""The LSTM decoder with Luong input feeding and global attention (Luong et al. 2015).

At step t, with y_{t-1} the previous target word's embedding:

    h_t  = LSTM([y_{t-1}; h~_{t-1}], h_{t-1})     input feeding (section 3.3); stacked layers
    h~_t = attention(h_t, source)                 eq. 5 (nmt.attention); h~_t = h_t without attention
    p(y_t | y_<t, x) = softmax(W_s h~_t)          eq. 6 (the model's generator)

The cells may be GRUs and the layers residual (nmt.model.rnn). With ``multi_attn`` = N (seq2seq-attn),
layer N's output h^N_t also attends over the source with its own attention, and its attentional
state tanh(W'_c [c'_t; h^N_t]) is the input of layer N + 1; the top attends as above, and its weights
are the ones the decoder reports. Bahdanau's order (attention before the RNN) is nmt.model.bahdanau.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from nmt.model.attention import GlobalAttention
from nmt.model.dropout import Dropout
from nmt.model.embeddings import WordEmbeddings
from nmt.model.rnn import by_layer, make_cells, new_state, run_stack

__all__ = ["SENTENCE_KEYS", "InputFeedDecoder", "State", "by_layer", "teacher_forced"]

# A decoding state is a dict of batch-first tensors, so that search can reorder every
# entry with one ``index_select(0, ...)``. Rows are hypotheses (batch * k, k per sentence,
# consecutive) for the first three and sentences for the others (``SENTENCE_KEYS``), which
# all hypotheses of a sentence share:
#   h, c   (rows, layers, hidden)    LSTM states (a GRU has no c: no such entry)
#   feed   (rows, hidden)            previous attentional output h~_{t-1} (input feeding)
#   memory (batch, src_len, mem)     encoder outputs h_s
#   keys   (batch, src_len, hidden)  attention keys, precomputed once per sentence
#   mask   (batch, src_len)          True at real source tokens
#   lower_keys (batch, src_len, hidden)  with multi_attn only: the lower attention's keys
State = dict[str, torch.Tensor]
SENTENCE_KEYS = ("memory", "keys", "mask", "lower_keys")


class InputFeedDecoder(nn.Module):
    def __init__(self, embeddings: WordEmbeddings, hidden: int, layers: int, attention: str,
                 memory_size: int, input_feed: bool, dropout: float, rnn_type: str = "lstm",
                 res_net: bool = False, multi_attn: int = 0):
        super().__init__()
        self.embeddings = embeddings
        self.input_feed = input_feed and attention != "none"
        in_size = embeddings.output_size + (hidden if self.input_feed else 0)
        self.cells = make_cells(rnn_type, in_size, hidden, layers)
        self.attention = GlobalAttention(attention, hidden, memory_size) if attention != "none" else None
        # seq2seq-attn -multi_attn: a second attention on layer N's output, whose h~ feeds layer N + 1
        self.multi_attn = multi_attn
        self.lower_attention = GlobalAttention(attention, hidden, memory_size) if multi_attn else None
        self.dropout = Dropout(dropout)
        self.hidden, self.rnn_type, self.res_net = hidden, rnn_type, res_net

    def init_state(self, memory, mask, h, c=None) -> State:
        """h, c: (batch, layers, hidden) initial states (c None for a GRU: its state has no c)."""
        keys = self.attention.keys(memory) if self.attention is not None else memory[:, :0]
        feed = memory.new_zeros(memory.size(0), self.hidden)
        state = {"h": h} if c is None else {"h": h, "c": c}
        state.update(feed=feed, memory=memory, keys=keys, mask=mask)
        if self.lower_attention is not None:
            state["lower_keys"] = self.lower_attention.keys(memory)
        return state

    def step(self, emb: torch.Tensor, state: State):
        """One step from embedded input (batch, emb). Returns output h~_t (batch, hidden),
        attention (batch, src_len) or None, and the new state."""
        x = torch.cat([emb, state["feed"]], dim=-1) if self.input_feed else emb
        lower = partial(self._lower_attend, state) if self.lower_attention is not None else None
        h, hs, cs = run_stack(self.cells, x, state, self.dropout, self.res_net, lower)
        if self.attention is not None:
            out, attn = self.attention(h, state["memory"], state["keys"], state["mask"])
        else:
            out, attn = h, None
        out = self.dropout(out)
        return out, attn, new_state(state, hs, cs, feed=out)

    def _lower_attend(self, state: State, layer: int, out: torch.Tensor) -> torch.Tensor:
        """Layer ``multi_attn``'s output replaced by its attentional state h~ (eq. 5 on that layer)."""
        if layer != self.multi_attn:
            return out
        return self.lower_attention(out, state["memory"], state["lower_keys"], state["mask"])[0]

    def forward(self, tgt_in: torch.Tensor, state: State):
        """Teacher-forced decoding of (batch, tgt_len): outputs (batch, tgt_len, hidden),
        attention (batch, tgt_len, src_len) or None."""
        return teacher_forced(self, tgt_in, state)


def teacher_forced(decoder: nn.Module, tgt_in: torch.Tensor, state: State):
    """``decoder.step`` over (batch, tgt_len) inputs: outputs (batch, tgt_len, hidden), attention
    (batch, tgt_len, src_len) or None."""
    emb = decoder.embeddings(tgt_in)  # (batch, tgt_len, emb)
    outs, attns = [], []
    for emb_t in emb.unbind(1):  # (one backward node; emb[:, t] would make a full-size gradient per step)
        out, attn, state = decoder.step(emb_t, state)
        outs.append(out)
        attns.append(attn)
    attn = torch.stack(attns, 1) if decoder.attention is not None else None
    return torch.stack(outs, 1), attn
