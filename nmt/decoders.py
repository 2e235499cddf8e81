"""The LSTM decoder with Luong input feeding and global attention."""

from __future__ import annotations

import torch
from torch import nn

from .attention import GlobalAttention
from .dropout import Dropout
from .embeddings import WordEmbeddings
from .step_gradients import CellWeights, FusedStep, OutputWeights, SourceForSteps

# A decoding state is a dict of batch-first tensors, so that search can reorder every
# entry with one ``index_select(0, ...)``. Rows are hypotheses (batch * k, k per sentence,
# consecutive) for the first three and sentences for the others (``SENTENCE_KEYS``), which
# all hypotheses of a sentence share:
#   h, c   (rows, layers, hidden)    LSTM states
#   feed   (rows, hidden)            previous attentional output (input feeding)
#   memory (batch, src_len, mem)     encoder outputs
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
        self.sum_step_gradients = True  # training on a CPU: see nmt.step_gradients (False: plain autograd)

    def init_state(self, memory, mask, h, c) -> State:
        """h, c: (batch, layers, hidden) initial LSTM states."""
        keys = self.attention.keys(memory) if self.attention is not None else memory[:, :0]
        feed = memory.new_zeros(memory.size(0), self.hidden)
        return {"h": h, "c": c, "feed": feed, "memory": memory, "keys": keys, "mask": mask}

    def step(self, emb: torch.Tensor, state: State, shared: _SharedBySteps | None = None):
        """One step from embedded input (batch, emb). Returns output (batch, hidden),
        attention (batch, src_len) or None, and the new state. ``shared``: training only."""
        if shared is not None and shared.fused is not None:
            drop = self.dropout.scale(state["feed"].shape, shared.fused.output.weight.dtype, emb.device)
            out, h, c, attn = shared.fused(emb, state["feed"], state["h"][:, 0], state["c"][:, 0], drop)
            new = dict(state)
            new.update(h=h.unsqueeze(1), c=c.unsqueeze(1), feed=out)
            return out, attn, new
        x = torch.cat([emb, state["feed"]], dim=-1) if self.input_feed else emb
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i > 0:
                x = self.dropout(h)  # between layers (the last layer's h goes to attention as is)
            h, c = state["h"][:, i], state["c"][:, i]
            h, c = cell(x, (h, c)) if shared is None else shared.cells[i](x, h, c)
            hs.append(h)
            cs.append(c)
        if self.attention is not None:
            source = shared.source if shared is not None else None
            out, attn = self.attention(h, state["memory"], state["keys"], state["mask"], source)
        else:
            out, attn = h, None
        out = self.dropout(out)
        new = dict(state)
        new.update(h=_by_layer(hs), c=_by_layer(cs), feed=out)
        return out, attn, new

    def forward(self, tgt_in: torch.Tensor, state: State):
        """Teacher-forced decoding of (batch, tgt_len): outputs (batch, tgt_len, hidden),
        attention (batch, tgt_len, src_len) or None."""
        emb = self.embeddings(tgt_in)  # (batch, tgt_len, emb)
        shared = None
        if self.sum_step_gradients and torch.is_grad_enabled() and emb.device.type == "cpu":
            shared = _SharedBySteps(self, state)
        outs, attns = [], []
        for emb_t in emb.unbind(1):  # (one backward node; emb[:, t] would make a full-size gradient per step)
            out, attn, state = self.step(emb_t, state, shared)
            outs.append(out)
            attns.append(attn)
        attn = torch.stack(attns, 1) if self.attention is not None else None
        return torch.stack(outs, 1), attn


class _SharedBySteps:
    """What the steps of one teacher-forced batch share, for ``nmt.step_gradients``: each
    cell's weights, and the attention's keys and memory (dot and general attention)."""

    def __init__(self, decoder: InputFeedDecoder, state: State):
        self.cells = [CellWeights(cell) for cell in decoder.cells]
        attention = decoder.attention
        self.source = None
        if attention is not None and attention.kind in ("dot", "general"):
            self.source = SourceForSteps(state["keys"], state["memory"])
        self.fused = None  # one layer with input feeding: the whole step as one node
        if self.source is not None and len(self.cells) == 1 and decoder.input_feed:
            self.fused = FusedStep(self.cells[0], self.source, OutputWeights(attention.linear_out), state["mask"])


def _by_layer(states: list[torch.Tensor]) -> torch.Tensor:
    """(rows, layers, hidden) from each layer's (rows, hidden); a view when there is one layer."""
    return states[0].unsqueeze(1) if len(states) == 1 else torch.stack(states, 1)
