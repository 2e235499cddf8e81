"""Reduced precision for CPU decoding: int8 dynamic quantization of the matrix layers, and when
it is the default.

Int8 changes scores by its rounding, and so, rarely, a translation. It is the default engine on a
CPU only for a checkpoint that records (``"int8"`` in its config.json, written by training and by
``scripts/export_bundled.py`` through ``measure_int8``) a validation BLEU with int8 search within
``INT8_MAX_BLEU_LOSS`` of fp32's; without a record, search stays exact fp32.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from nmt.model.seq2seq import Seq2Seq

INT8_MAX_BLEU_LOSS = 0.3  # validation BLEU int8 may lose against fp32 and still be the default


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """A copy whose Linear, LSTMCell and GRUCell layers run in int8 (weights quantized once, activations per call).

    Decoding is bound by reading the output layer's weights at every step; int8 reads a quarter
    of the bytes. The encoder's LSTM or GRU and the embeddings stay in fp32.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(),
                                                      {nn.Linear, nn.LSTMCell, nn.GRUCell}, dtype=torch.qint8)


def int8_keeps_quality(record) -> bool:
    """Whether a checkpoint's ``int8`` record shows int8 search within INT8_MAX_BLEU_LOSS BLEU of fp32
    (an untrusted checkpoint's record may be anything: anything but two finite numbers is no)."""
    from nmt.checkpoint import finite_number

    if not isinstance(record, dict):
        return False
    fp32, int8 = finite_number(record.get("valid_bleu_fp32")), finite_number(record.get("valid_bleu_int8"))
    return fp32 is not None and int8 is not None and fp32 - int8 <= INT8_MAX_BLEU_LOSS


def measure_int8(translator, sources: list[str], references: list[str], **decode) -> dict:
    """The record ``int8_keeps_quality`` reads: corpus BLEU of fp32 and of int8 search on these
    (validation) pairs, with the checkpoint's decoding settings and ``decode`` overrides."""
    from nmt.evaluation import corpus_scores

    bleu = {}
    for name, int8 in (("fp32", False), ("int8", True)):
        found = translator.translate(sources, int8=int8, **decode)
        bleu[name] = round(corpus_scores([t.text for t in found], references).bleu, 2)
    return {"valid_bleu_fp32": bleu["fp32"], "valid_bleu_int8": bleu["int8"], "sentences": len(sources),
            "max_bleu_loss": INT8_MAX_BLEU_LOSS}
