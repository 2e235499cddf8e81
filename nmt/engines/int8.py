"""Reduced precision for CPU decoding: int8 dynamic quantization of the matrix layers."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from nmt.model.seq2seq import Seq2Seq


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """A copy whose Linear and LSTMCell layers run in int8 (weights quantized once, activations per call).

    Decoding is bound by reading the output layer's weights at every step; int8 reads a quarter
    of the bytes. The encoder's LSTM and the embeddings stay in fp32.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear, nn.LSTMCell},
                                                      dtype=torch.qint8)
