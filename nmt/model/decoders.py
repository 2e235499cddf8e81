"""The LSTM decoder with Luong input feeding and global attention (Luong et al. 2015).

At step t, with y_{t-1} the previous target word's embedding:

    h_t  = LSTM([y_{t-1}; h~_{t-1}], h_{t-1})     input feeding (section 3.3); stacked layers
    h~_t = attention(h_t, source)                 eq. 5 (nmt.attention); h~_t = h_t without attention
    p(y_t | y_<t, x) = softmax(W_s h~_t)          eq. 6 (the model's generator)
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.attention import GlobalAttention
from nmt.model.dropout import Dropout
from nmt.model.embeddings import WordEmbeddings

# A decoding state is a dict of batch-first tensors, so that search can reorder every
# entry with one ``index_select(0, ...)``. Rows are hypotheses (batch * k, k per sentence,
# consecutive) for the first three and sentences for the others (``SENTENCE_KEYS``), which
# all hypotheses of a sentence share:
#   h, c   (rows, layers, hidden)    LSTM states
#   feed   (rows, hidden)            previous attentional output h~_{t-1} (input feeding)
#   memory (batch, src_len, mem)     encoder outputs h_s
#   keys   (batch, src_len, hidden)  attention keys, precomputed once per sentence
#   mask   (batch, src_len)          True at real source tokens
State = dict[str, torch.Tensor]
SENTENCE_KEYS = ("memory", "keys", "mask")


class InputFeedDecoder(nn.Module):
    def __init__(self, embeddings: WordEmbeddings, hidden: int, layers: int, attention: str,
                 memory_size: int, input_feed: bool, dropout: float):
        super().__init__()
        self.embeddings = embeddings
        self.input_feed = input_feed and attention != "none"
        in_size = embeddings.output_size + (hidden if self.input_feed else 0)
        self.cells = nn.ModuleList(nn.LSTMCell(in_size if i == 0 else hidden, hidden) for i in range(layers))
        self.attention = GlobalAttention(attention, hidden, memory_size) if attention != "none" else None
        self.dropout = Dropout(dropout)
        self.hidden = hidden

    def init_state(self, memory, mask, h, c) -> State:
        """h, c: (batch, layers, hidden) initial LSTM states."""
        keys = self.attention.keys(memory) if self.attention is not None else memory[:, :0]
        feed = memory.new_zeros(memory.size(0), self.hidden)
        return {"h": h, "c": c, "feed": feed, "memory": memory, "keys": keys, "mask": mask}

    def step(self, emb: torch.Tensor, state: State):
        """One step from embedded input (batch, emb). Returns output h~_t (batch, hidden),
        attention (batch, src_len) or None, and the new state."""
        x = torch.cat([emb, state["feed"]], dim=-1) if self.input_feed else emb
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i > 0:
                x = self.dropout(hs[-1])  # between layers (the last layer's h goes to attention as is)
            h, c = cell(x, (state["h"][:, i], state["c"][:, i]))
            hs.append(h)
            cs.append(c)
        if self.attention is not None:
            out, attn = self.attention(h, state["memory"], state["keys"], state["mask"])
        else:
            out, attn = h, None
        out = self.dropout(out)
        new = dict(state)
        new.update(h=by_layer(hs), c=by_layer(cs), feed=out)
        return out, attn, new

    def forward(self, tgt_in: torch.Tensor, state: State):
        """Teacher-forced decoding of (batch, tgt_len): outputs (batch, tgt_len, hidden),
        attention (batch, tgt_len, src_len) or None."""
        emb = self.embeddings(tgt_in)  # (batch, tgt_len, emb)
        outs, attns = [], []
        for emb_t in emb.unbind(1):  # (one backward node; emb[:, t] would make a full-size gradient per step)
            out, attn, state = self.step(emb_t, state)
            outs.append(out)
            attns.append(attn)
        attn = torch.stack(attns, 1) if self.attention is not None else None
        return torch.stack(outs, 1), attn


def by_layer(states: list[torch.Tensor]) -> torch.Tensor:
    """(rows, layers, hidden) from each layer's (rows, hidden); a view when there is one layer."""
    return states[0].unsqueeze(1) if len(states) == 1 else torch.stack(states, 1)
