"""Dropout whose mask comes from ``torch.rand``.

The same distribution as ``nn.Dropout`` (each unit zeroed with probability p, the others scaled
by 1/(1-p)). On a CPU, PyTorch's dropout draws its mask with ``bernoulli_``, several times slower
than ``rand`` (BENCHMARKS.md). The module has no parameters, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale(x.shape, x.dtype, x.device)
        return x if scale is None else x * scale

    def scale(self, shape, dtype: torch.dtype, device=None) -> torch.Tensor | None:
        """The factors the next ``forward`` of that shape would multiply by: 0 or 1/(1-p), or
        None when it would change nothing (evaluation, p = 0)."""
        if not self.training or self.p == 0:
            return None
        return ((torch.rand(shape, device=device) >= self.p) * (1.0 / (1.0 - self.p))).to(dtype)  # (drawn in float32)

    def extra_repr(self) -> str:
        return f"p={self.p}"
