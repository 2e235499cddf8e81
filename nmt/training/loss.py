"""The training loss: label-smoothed cross-entropy over the real target tokens."""

from __future__ import annotations

import torch

from nmt.vocabulary import PAD_ID


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over rows of logits, fused: one softmax pass backward.

    Returns the summed loss and (not differentiable) the summed NLL. Built on log_softmax and
    softmax, single fused kernels, where ``logsumexp`` on a CPU makes temporaries and is slower.

    Both run in the logits' own dtype: with bf16 logits (--amp) that halves the memory traffic
    over the widest arrays of a step, and the gradient is bf16 anyway. The sums are taken in fp32."""

    @staticmethod
    def forward(ctx, logits, target, smoothing):  # logits (rows >= n, vocab), target (n,)
        logp = torch.log_softmax(logits[: target.size(0)], dim=-1)
        nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1).float()
        loss = (1.0 - smoothing) * nll - smoothing * logp.mean(-1, dtype=torch.float32) if smoothing else nll
        ctx.save_for_backward(logits, target)
        ctx.smoothing = smoothing
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return loss.sum(), nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        logits, target = ctx.saved_tensors
        eps = ctx.smoothing
        n = target.size(0)
        grad = torch.softmax(logits, dim=-1)
        if eps:
            grad[:n].sub_(eps / logits.size(1))
        grad[torch.arange(n, device=grad.device), target] -= 1.0 - eps
        grad[n:] = 0.0  # rows that only round the shape
        return grad.mul_(grad_loss), None, None


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed training loss (label-smoothed) and summed NLL over non-padding targets.
    logits (batch, len, vocab) or already (rows, vocab); target (batch, len) or (tokens,).
    Rows of ``logits`` beyond the targets' count (see ``output_positions``) get no loss and no gradient."""
    mask = target != PAD_ID
    if logits.dim() == 3:
        logits = logits[mask]
    return _SmoothedCrossEntropy.apply(logits, target[mask], smoothing)


def output_positions(mask: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Flat positions (rows,) in ``mask`` (batch, len) for the output layer: its True ones, then
    as many False ones (padding) as round the count up to a ``multiple``, while there are any.

    oneDNN builds a bf16 matrix product for every new shape it sees, which for the output layer
    costs more than the product itself, three times a batch (forward and backward) if every batch
    brought a new token count. Rounding keeps the count of shapes small, so they are built once."""
    flat = mask.flatten()
    positions = flat.nonzero().squeeze(1)
    extra = -positions.numel() % multiple
    if extra:
        positions = torch.cat([positions, (~flat).nonzero().squeeze(1)[:extra]])
    return positions
