"""Guided alignment in training (Chen et al. 2016; seq2seq-attn's ``guided_alignment``): the loss
L = CE + w_e * G, with G the cross-entropy between the attention and the word aligner's links
(``nmt.alignment.guided_alignment_loss``) and w_e = guided_alignment_weight * guided_alignment_decay^(e-1)
at epoch e. Validation with ``--alignvalfile`` reports G and the alignment error rate of the
attention's argmax links against the aligner's."""

from __future__ import annotations

import torch

from nmt.alignment import alignment_batch, alignment_error_rate, attention_links, guided_alignment_loss
from nmt.config import DataConfig, ModelConfig, TrainConfig
from nmt.data import Batch
from nmt.vocabulary import PAD_ID


def check_guidance(d: DataConfig, m: ModelConfig, t: TrainConfig) -> None:
    """What guided alignment needs: links for the training pairs, an attention, Moses tokens."""
    if t.guided_alignment and not d.alignfile:
        raise ValueError("--guided-alignment needs --alignfile (python -m nmt align writes one)")
    if (d.alignfile or d.alignvalfile) and m.attention == "none":
        raise ValueError("--alignfile/--alignvalfile need an attention (this model's is 'none')")
    if (d.alignfile or d.alignvalfile) and m.src_features == "inline":
        raise ValueError("--alignfile: alignments are on Moses tokens, not on an inline-feature source split at spaces")
    if d.alignfile and d.data:
        raise ValueError("--alignfile applies to raw training files, not to a --data folder")
    if not t.guided_alignment_weight >= 0 or not t.guided_alignment_decay >= 0:
        raise ValueError("--guided-alignment-weight and --guided-alignment-decay must be at least 0")


def guidance_weight(t: TrainConfig, epoch: int) -> float:
    """w_e: the alignment loss's weight at ``epoch`` (0 without guidance)."""
    return t.guided_alignment_weight * t.guided_alignment_decay ** (epoch - 1) if t.guided_alignment else 0.0


def batch_alignment(links: list, batch: Batch, device: torch.device) -> torch.Tensor:
    """(batch, tgt_len, src_len) target-normalised links of ``batch``'s pairs (``links``: per dataset pair)."""
    src_lens = batch.src_lengths.tolist()
    tgt_lens = (batch.tgt_out != PAD_ID).sum(1).sub(1).tolist()  # (words, without </s>)
    return alignment_batch([links[i] for i in batch.index], src_lens, tgt_lens, batch.src.size(1),
                           batch.tgt_out.size(1)).to(device)


def alignment_loss(attention: torch.Tensor, links: list, batch: Batch) -> tuple[torch.Tensor, int]:
    """G summed over the batch's linked target words, and their number."""
    return guided_alignment_loss(attention, batch_alignment(links, batch, attention.device))


class AlignmentScore:
    """Validation's running G and AER (argmax links of the teacher-forced attention)."""

    def __init__(self):
        self.loss, self.rows, self.found, self.sure = 0.0, 0, [], []

    def add(self, attention: torch.Tensor, links: list, batch: Batch) -> None:
        loss, rows = alignment_loss(attention.float(), links, batch)
        self.loss, self.rows = self.loss + float(loss), self.rows + rows
        tgt_lens = (batch.tgt_out != PAD_ID).sum(1).sub(1).tolist()
        for row, i in enumerate(batch.index):
            self.found.append(attention_links(attention[row].float().cpu(), int(batch.src_lengths[row]), tgt_lens[row]))
            self.sure.append(links[i])

    def result(self) -> dict:
        return {"valid_align_loss": self.loss / max(self.rows, 1), "valid_aer": alignment_error_rate(self.found, self.sure)}
