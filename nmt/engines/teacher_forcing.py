"""Engine: teacher-forced training on a CPU, with gradients that sum over the decoder's steps
computed once per batch. The trainer opts in (``TeacherForcing.supports``); the model knows
nothing of it, and its plain ``forward`` is the reference the tests compare this engine with.

Teacher-forced decoding uses the same LSTM weights, and attends over the same source memory
and keys, at every step. Autograd computes each step's share of their gradients with small
products (for the memory and keys, an outer product per sentence and step) and adds the shares
up as it goes. Here a step keeps only the two factors of its share, and the sum over the steps
is one large product: sum_t a_t^T b_t = [a_1; ...; a_T]^T [b_1; ...; b_T].

How the gradients get there: ``_Shared`` hands the per-batch tensors (the LSTM weights, the
memory and keys) to the steps; the steps' backward functions return no gradient for them and
record their factors instead; autograd calls ``_Shared``'s backward only after every step's
(it depends on them all), which then multiplies the factors out. No other change to training:
``loss.backward()`` leaves the same gradients (up to float rounding; the tests compare them).

The steps are written for Luong's decoder of LSTM cells (``TeacherForcing.handles``); a GRU, residual
layers, a lower attention (multi_attn) or Bahdanau's decoder train through the model's plain forward.

A one-layer decoder with input feeding and dot or general attention (the classic setting) goes
further: its whole step is one autograd node (``FusedStep``), with the backward written out,
instead of a graph of some thirty nodes per step.
It computes the same forward values as the step's modules and records the same factors, and the
attention's output layer joins them (``OutputWeights``).

Under bf16 autocast the attention products also run in fp32: their operands are tiny (one
query row per sentence), and such bf16 products cost more than fp32 ones on a CPU. Its
gradients get closer to full precision on the way (see the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.model.decoders import InputFeedDecoder, State, by_layer
from nmt.model.seq2seq import Seq2Seq


class _Factors:
    """The factors (a_t, b_t) that the steps record, over (rows, n) and (rows, m) tensors or
    batched ones, (batch, rows, n) and (batch, rows, m)."""

    def __init__(self):
        self.left: list[torch.Tensor] = []
        self.right: list[torch.Tensor] = []

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.left.append(a)
        self.right.append(b)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All steps' factors, rows concatenated; forgets them (a graph may be run again)."""
        a, b = torch.cat(self.left, -2), torch.cat(self.right, -2)
        self.left, self.right = [], []
        return a, b


def _sum_of_products(factors: _Factors) -> torch.Tensor:
    """sum_t a_t^T b_t: (n, m), or (batch, n, m) for batched factors."""
    a, b = factors.stacked()
    return torch.matmul(a.transpose(-1, -2), b)


class _Shared(torch.autograd.Function):
    """Identity on per-batch tensors that the steps use; their gradient is what ``gradients()``
    makes of the steps' factors (plus any gradient that reached the tensors otherwise). It runs
    after every step's backward, since it feeds them all.

    ``gradients`` must not hold the outputs: a tensor's graph holding the tensor is a reference
    cycle through C++ that Python's collector cannot free (every batch would leak them)."""

    @staticmethod
    def forward(ctx, gradients: Callable[[], tuple[torch.Tensor, ...]], *tensors):
        ctx.gradients = gradients
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        totals = ctx.gradients()
        return (None, *(total if grad is None else total + grad for total, grad in zip(totals, grads)))


class _StepLinear(torch.autograd.Function):
    """x W^T + b for one step; W's gradient is left to ``factors`` as (grad, x)."""

    @staticmethod
    def forward(ctx, x, weight, bias, factors: _Factors):
        ctx.save_for_backward(x, weight)
        ctx.factors = factors
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.factors.add(grad, x)
        return grad.mm(weight), None, None, None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products run in: the autocast dtype under autocast, else the weights' own."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else dtype


class CellWeights:
    """An ``nn.LSTMCell``'s weights for one teacher-forced batch: its two products as one (the
    input and the previous h concatenated), with the weights cast to the autocast dtype once."""

    def __init__(self, cell: nn.LSTMCell):
        dtype = _compute_dtype(cell.weight_ih.dtype)
        weight = torch.cat([cell.weight_ih, cell.weight_hh], 1).to(dtype)  # (4 hidden, in + hidden)
        bias = (cell.bias_ih + cell.bias_hh).to(dtype)
        self.factors = _Factors()  # (gradient of the gates, input) per step
        self.weight, self.bias = _Shared.apply(partial(_cell_gradients, self.factors), weight, bias)

    def __call__(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """``nn.LSTMCell``'s step (gates i, f, g, o). x (batch, in), h and c (batch, hidden)."""
        xh = torch.cat([x, h], 1).to(self.weight.dtype)
        i, f, g, o = _StepLinear.apply(xh, self.weight, self.bias, self.factors).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def _cell_gradients(factors: _Factors) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight's and the bias's gradients, summed over the steps."""
    grad, xh = factors.stacked()  # (rows, 4 hidden), (rows, in + hidden)
    return grad.t().mm(xh), grad.sum(0)


class _StepAttention(torch.autograd.Function):
    """Dot-product scores, softmax and context for one step, in fp32. The gradients of the keys
    and memory are left to the factors, as (score gradients, queries) and (weights, context
    gradients)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, q, keys, memory, mask, factors: tuple[_Factors, _Factors]):
        # q (batch, k, hidden), keys (batch, src_len, hidden), memory (batch, src_len, mem)
        scores = torch.bmm(q, keys.transpose(1, 2)).masked_fill_(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (batch, k, src_len)
        ctx.save_for_backward(q, keys, memory, weights)
        ctx.factors = factors
        ctx.set_materialize_grads(False)
        return torch.bmm(weights, memory), weights

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_context, grad_weights):
        q, keys, memory, weights = ctx.saved_tensors
        if grad_context is None:
            grad_context = memory.new_zeros(q.size(0), q.size(1), memory.size(2))
        return _attention_backward(grad_context, grad_weights, q, keys, memory, weights, ctx.factors), None, None, None, None


def _attention_backward(grad_context, grad_weights, q, keys, memory, weights, factors) -> torch.Tensor:
    """The gradient of the queries q (batch, k, hidden) given those of the context (batch, k, mem)
    and of the weights (batch, k, src_len, or None); the keys' and memory's shares go to their
    ``factors`` as (score gradients, queries) and (weights, context gradients)."""
    grad_w = torch.bmm(grad_context, memory.transpose(1, 2))  # (batch, k, src_len)
    if grad_weights is not None:
        grad_w = grad_w + grad_weights
    grad_scores = weights * (grad_w - (grad_w * weights).sum(-1, keepdim=True))  # softmax's backward
    keys_factors, memory_factors = factors
    keys_factors.add(grad_scores, q)
    memory_factors.add(weights, grad_context)
    return torch.bmm(grad_scores, keys)


class SourceForSteps:
    """Dot and general attention's keys and memory for one teacher-forced batch, in fp32."""

    def __init__(self, keys: torch.Tensor, memory: torch.Tensor):
        self.factors = (_Factors(), _Factors())  # for the keys and for the memory
        self.keys, self.memory = _Shared.apply(partial(_source_gradients, self.factors), keys.float(), memory.float())

    def __call__(self, q: torch.Tensor, mask: torch.Tensor):
        """q (batch, k, hidden) -> context (batch, k, mem) in fp32, weights (batch, k, src_len)."""
        return _StepAttention.apply(q, self.keys, self.memory, mask, self.factors)


def _source_gradients(factors: tuple[_Factors, _Factors]) -> tuple[torch.Tensor, ...]:
    return tuple(_sum_of_products(f) for f in factors)


class OutputWeights:
    """The attention's output layer (bias-free ``nn.Linear``) for one teacher-forced batch: its
    weight cast to the compute dtype once, its gradient summed from the steps' factors."""

    def __init__(self, linear: nn.Linear):
        self.factors = _Factors()  # (gradient of the output, input) per step
        weight = linear.weight.to(_compute_dtype(linear.weight.dtype))
        (self.weight,) = _Shared.apply(partial(_output_gradient, self.factors), weight)


def _output_gradient(factors: _Factors) -> tuple[torch.Tensor]:
    return (_sum_of_products(factors),)


class FusedStep:
    """A whole teacher-forced step of a one-layer decoder with input feeding and dot or general
    attention, as one autograd node with a written-out backward (``_FusedStep``): the same
    operations as the step's modules, without a graph of some thirty nodes per step."""

    def __init__(self, cell: CellWeights, source: SourceForSteps, output: OutputWeights, mask: torch.Tensor):
        self.cell, self.source, self.output = cell, source, output
        self.factors = (cell.factors, *source.factors, output.factors)
        self.padding = ~mask.unsqueeze(1)  # (batch, 1, src_len) True at padding

    def __call__(self, emb, feed, h, c, drop):
        """emb (batch, emb), feed, h, c (batch, hidden); drop (batch, hidden) the dropout's
        scale or None. Returns out (the new feed), h, c, and the attention weights (batch, src_len)."""
        return _FusedStep.apply(emb, feed, h, c, self.cell.weight, self.cell.bias, self.source.keys,
                                self.source.memory, self.output.weight, self.padding, drop, self.factors)


class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb, feed, h, c, weight, bias, keys, memory, out_weight, mask, drop, factors):
        with torch.autocast("cpu", enabled=False):  # the dtypes are set here: as autocast, attention in fp32
            return _FusedStep._forward(ctx, emb, feed, h, c, weight, bias, keys, memory, out_weight, mask, drop, factors)

    @staticmethod
    def _forward(ctx, emb, feed, h, c, weight, bias, keys, memory, out_weight, mask, drop, factors):
        xh = torch.cat([emb, feed, h], 1).to(weight.dtype)  # (batch, emb + 2 hidden)
        gates = torch.addmm(bias, xh, weight.t())  # (batch, 4 hidden): i f g o
        hidden = gates.size(1) // 4
        act = torch.sigmoid(gates)  # (its g block is not used)
        i, f, o = act[:, :hidden], act[:, hidden : 2 * hidden], act[:, 3 * hidden :]
        g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
        c_new = f * c + i * g
        tc = torch.tanh(c_new)
        h_new = o * tc
        q = h_new.float().unsqueeze(1)  # (batch, 1, hidden)
        scores = torch.bmm(q, keys.transpose(1, 2)).masked_fill_(mask, float("-inf"))
        w = torch.softmax(scores, dim=-1)  # (batch, 1, src_len)
        z = torch.cat([torch.bmm(w, memory), q], -1).squeeze(1).to(out_weight.dtype)  # (batch, mem + hidden)
        a = torch.tanh(z.mm(out_weight.t()))  # (batch, hidden)
        out = a * drop if drop is not None else a
        ctx.save_for_backward(xh, act, g, c, tc, q, w, z, a, drop, weight, keys, memory, out_weight)
        ctx.factors = factors
        ctx.dtypes = emb.dtype, feed.dtype, h.dtype, c.dtype
        ctx.set_materialize_grads(False)
        return out, h_new, c_new, w.squeeze(1)

    @staticmethod
    def backward(ctx, d_out, d_h, d_c, d_w):
        xh, act, g, c, tc, q, w, z, a, drop, weight, keys, memory, out_weight = ctx.saved_tensors
        cell_factors, keys_factors, memory_factors, out_factors = ctx.factors
        hidden, mem = tc.size(1), memory.size(2)
        i, f, o = act[:, :hidden], act[:, hidden : 2 * hidden], act[:, 3 * hidden :]
        d_a = d_out.float() if drop is None else d_out.float() * drop
        d_a = (d_a * (1 - a.float().square())).to(out_weight.dtype)  # (batch, hidden), before the tanh
        out_factors.add(d_a, z)
        d_z = d_a.mm(out_weight).float()  # (batch, mem + hidden)
        d_ctx = d_z[:, :mem].unsqueeze(1)  # (batch, 1, mem)
        d_w = d_w.unsqueeze(1) if d_w is not None else None
        d_q = _attention_backward(d_ctx, d_w, q, keys, memory, w, (keys_factors, memory_factors))
        d_h_new = d_z[:, mem:] + d_q.squeeze(1)
        if d_h is not None:
            d_h_new = d_h_new + d_h
        d_c_new = d_h_new * o * (1 - tc.square())
        if d_c is not None:
            d_c_new = d_c_new + d_c
        slopes = act * (1 - act)  # the gates' derivatives: sigmoid's, and tanh's for g
        slopes[:, 2 * hidden : 3 * hidden] = 1 - g.square()
        d_gates = (torch.cat([d_c_new * g, d_c_new * c, d_c_new * i, d_h_new * tc], 1) * slopes).to(weight.dtype)
        cell_factors.add(d_gates, xh)
        d_xh = d_gates.mm(weight)  # (batch, emb + 2 hidden)
        n_emb = xh.size(1) - 2 * hidden
        d_emb, d_feed, d_hprev = d_xh.split([n_emb, hidden, hidden], 1)
        e, fe, hh, cc = ctx.dtypes
        return (d_emb.to(e), d_feed.to(fe), d_hprev.to(hh), (d_c_new * f).to(cc),
                None, None, None, None, None, None, None, None)


class TeacherForcing:
    """Teacher-forced ``Seq2Seq.forward`` on a CPU through the step-summed gradients (and, where
    the decoder allows, ``FusedStep``): the same outputs, and gradients equal to autograd's up to
    float rounding. ``fuse=False`` keeps each step's modules (for the tests)."""

    def __init__(self, fuse: bool = True):
        self.fuse = fuse

    @staticmethod
    def supports(device: torch.device, scheduled_sampling: float) -> bool:
        """CPU training without scheduled sampling (which feeds predictions step by step)."""
        return device.type == "cpu" and scheduled_sampling <= 0

    @staticmethod
    def handles(cfg: ModelConfig) -> bool:
        """Whether the hand-written steps implement this decoder: Luong's, of LSTM cells, without
        residual layers or a lower attention (any encoder: it runs as the model's own)."""
        return cfg.rnn_type == "lstm" and not cfg.res_net and not cfg.multi_attn and cfg.decoder == "luong"

    def forward(self, model: Seq2Seq, src, src_lengths, tgt_in, only: torch.Tensor | None = None):
        """Logits and attention as ``model(src, src_lengths, tgt_in, only=only)``; a decoder the engine
        does not implement (``handles``) runs as the model's plain forward (the trainer asks ``supports``,
        which knows only the device, so the fall-back is here)."""
        if not self.handles(model.cfg):
            return model(src, src_lengths, tgt_in, only=only)
        state = model.encode(src, src_lengths)
        decoder = model.decoder
        emb = decoder.embeddings(tgt_in)  # (batch, tgt_len, emb)
        steps = _SharedBySteps(decoder, state, self.fuse)
        outs, attns = [], []
        for emb_t in emb.unbind(1):
            out, attn, state = steps.step(emb_t, state)
            outs.append(out)
            attns.append(attn)
        attn = torch.stack(attns, 1) if decoder.attention is not None else None
        return model.logits(torch.stack(outs, 1), only), attn


class _SharedBySteps:
    """What the steps of one teacher-forced batch share: each cell's weights, and the attention's
    keys and memory (dot and general attention); ``step`` is ``InputFeedDecoder.step`` through them."""

    def __init__(self, decoder: InputFeedDecoder, state: State, fuse: bool):
        self.decoder = decoder
        self.cells = [CellWeights(cell) for cell in decoder.cells]
        attention = decoder.attention
        self.source = None
        if attention is not None and attention.kind in ("dot", "general"):
            self.source = SourceForSteps(state["keys"], state["memory"])
        self.fused = None  # one layer with input feeding: the whole step as one node
        if fuse and self.source is not None and len(self.cells) == 1 and decoder.input_feed:
            self.fused = FusedStep(self.cells[0], self.source, OutputWeights(attention.linear_out), state["mask"])

    def step(self, emb: torch.Tensor, state: State):
        """``InputFeedDecoder.step``: the same draws of the dropout masks, in the same order."""
        decoder = self.decoder
        if self.fused is not None:
            drop = decoder.dropout.scale(state["feed"].shape, self.fused.output.weight.dtype, emb.device)
            out, h, c, attn = self.fused(emb, state["feed"], state["h"][:, 0], state["c"][:, 0], drop)
            return out, attn, {**state, "h": h.unsqueeze(1), "c": c.unsqueeze(1), "feed": out}
        x = torch.cat([emb, state["feed"]], dim=-1) if decoder.input_feed else emb
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i > 0:
                x = decoder.dropout(hs[-1])
            h, c = cell(x, state["h"][:, i], state["c"][:, i])
            hs.append(h)
            cs.append(c)
        out, attn = self._attend(h, state)
        out = decoder.dropout(out)
        return out, attn, {**state, "h": by_layer(hs), "c": by_layer(cs), "feed": out}

    def _attend(self, h: torch.Tensor, state: State):
        attention = self.decoder.attention
        if attention is None:
            return h, None
        if self.source is None:  # (concat attention: its own module)
            return attention(h, state["memory"], state["keys"], state["mask"])
        mask = state["mask"]
        q = h.view(mask.size(0), -1, h.size(-1))  # (batch, k, hidden)
        context, weights = self.source(q, mask)
        return attention.attentional_state(context, q).view(h.shape), weights.view(-1, mask.size(1))
