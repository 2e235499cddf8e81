"""Training on a CPU: gradients that sum over the decoder's steps, computed once per batch.

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

Under bf16 autocast the attention products also run in fp32: their operands are tiny (one
query row per sentence), and such bf16 products cost more than fp32 ones on a CPU (28 against
11 µs for a batch of 64). Its gradients get closer to full precision on the way (see the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn


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


class CellWeights:
    """An ``nn.LSTMCell``'s weights for one teacher-forced batch: its two products as one (the
    input and the previous h concatenated), with the weights cast to the autocast dtype once."""

    def __init__(self, cell: nn.LSTMCell):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else cell.weight_ih.dtype
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
        grad_w = torch.bmm(grad_context, memory.transpose(1, 2))  # (batch, k, src_len)
        if grad_weights is not None:
            grad_w = grad_w + grad_weights
        grad_scores = weights * (grad_w - (grad_w * weights).sum(-1, keepdim=True))  # softmax's backward
        keys_factors, memory_factors = ctx.factors
        keys_factors.add(grad_scores, q)
        memory_factors.add(weights, grad_context)
        return torch.bmm(grad_scores, keys), None, None, None, None


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
