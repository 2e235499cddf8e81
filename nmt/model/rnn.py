"""Recurrent cells and their stacking, shared by the decoders: LSTM or GRU, optionally residual.

A stack of L layers reads x_1 (the step's input) and, layer by layer,

    h_l = cell_l(x_l, h_l(t-1))                     an LSTM (Hochreiter & Schmidhuber) or a GRU (Cho et al. 2014)
    o_l = h_l + x_l  for l > 1 with ``res_net``      residual connections (seq2seq-attn -res_net; Wu et al. 2016,
    o_l = h_l        otherwise                       section 3.1: the input of a layer is added to its output)
    x_{l+1} = dropout(o_l)                          between layers (Zaremba et al. 2014)

A GRU has no cell state: its decoding state has no ``c`` entry (see ``nmt.model.decoders``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nmt.model.dropout import Dropout

CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}
RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


def make_cells(rnn_type: str, input_size: int, hidden: int, layers: int) -> nn.ModuleList:
    """The stack's cells: the first reads ``input_size``, the others the layer below (``hidden``)."""
    cell = CELLS[rnn_type]
    return nn.ModuleList(cell(input_size if i == 0 else hidden, hidden) for i in range(layers))


def run_stack(cells: nn.ModuleList, x: torch.Tensor, state: dict, dropout: Dropout, res_net: bool,
              between: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
    """One step of the stacked cells from x (rows, in) and the state's h (and c, for an LSTM)
    (rows, layers, hidden). ``between(l, o_l)`` (1-based l, below the top) may replace a layer's
    output before the dropout (the decoder's lower attention). Returns the top output o_L
    (rows, hidden) and each layer's new h and c (lists; no c for a GRU)."""
    has_c = "c" in state  # (an LSTM's state; an int8 cell is no nn.LSTMCell, so the state tells)
    hs, cs = [], []
    out = x
    for i, cell in enumerate(cells):
        if i > 0:
            x = dropout(between(i, out) if between is not None else out)  # (the top's output goes on as is)
        if has_c:
            h, c = cell(x, (state["h"][:, i], state["c"][:, i]))
            cs.append(c)
        else:
            h = cell(x, state["h"][:, i])
        hs.append(h)
        out = h + x if res_net and i > 0 else h
    return out, hs, cs


def by_layer(states: list[torch.Tensor]) -> torch.Tensor:
    """(rows, layers, hidden) from each layer's (rows, hidden); a view when there is one layer."""
    return states[0].unsqueeze(1) if len(states) == 1 else torch.stack(states, 1)


def new_state(state: dict, hs: list[torch.Tensor], cs: list[torch.Tensor], **entries: torch.Tensor) -> dict:
    """The state after a step: the layers' h (and c) and the decoder's other ``entries``."""
    new = dict(state)
    new["h"] = by_layer(hs)
    if cs:
        new["c"] = by_layer(cs)
    new.update(entries)
    return new
