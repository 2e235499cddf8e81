"""Training: the loop, the loss, the optimizer step, checkpoints and resumption."""

from nmt.training.trainer import Trainer

__all__ = ["Trainer"]
