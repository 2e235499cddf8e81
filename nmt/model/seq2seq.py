"""The attentional encoder-decoder (Luong et al. 2015): encoder, decoder, generator."""

from __future__ import annotations

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.model.decoders import SENTENCE_KEYS, InputFeedDecoder, State
from nmt.model.embeddings import WordEmbeddings
from nmt.model.encoders import LSTMEncoder


class Seq2Seq(nn.Module):
    sentence_keys = SENTENCE_KEYS  # state entries shared by a sentence's hypotheses in search

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.src_vocab < 5 or cfg.tgt_vocab < 5:
            raise ValueError("vocabulary sizes must be set (src_vocab, tgt_vocab)")
        self.cfg = cfg
        src_emb = WordEmbeddings(cfg.src_vocab, cfg.emb_size, cfg.dropout)
        tgt_emb = WordEmbeddings(cfg.tgt_vocab, cfg.emb_size, cfg.dropout)
        self.encoder = LSTMEncoder(src_emb, cfg.hidden, cfg.layers, cfg.brnn, cfg.dropout, cfg.reverse_src)
        self.decoder = InputFeedDecoder(tgt_emb, cfg.hidden, cfg.layers, cfg.attention,
                                        self.encoder.output_size, cfg.input_feed, cfg.dropout)
        if cfg.init_dec and cfg.bridge:
            self.bridge = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(2))
        self.generator = nn.Linear(cfg.hidden, cfg.tgt_vocab)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.generator.weight = tgt_emb.embedding.weight

    def reset_parameters(self) -> None:
        if self.cfg.param_init > 0:
            for p in self.parameters():
                nn.init.uniform_(p, -self.cfg.param_init, self.cfg.param_init)
        with torch.no_grad():
            for emb in (self.encoder.embeddings, self.decoder.embeddings):
                emb.weight[emb.embedding.padding_idx].zero_()

    @property
    def has_attention(self) -> bool:
        return self.decoder.attention is not None

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> State:
        """Encode (batch, src_len) and return the decoder's initial state."""
        memory, (h, c) = self.encoder(src, lengths)
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        if not self.cfg.init_dec:
            h, c = torch.zeros_like(h), torch.zeros_like(c)
        elif self.cfg.bridge:
            h, c = torch.tanh(self.bridge[0](h)), torch.tanh(self.bridge[1](c))
        return self.decoder.init_state(memory, mask, h.transpose(0, 1), c.transpose(0, 1))

    def forward(self, src, src_lengths, tgt_in, sampling_prob: float = 0.0, only: torch.Tensor | None = None):
        """Logits (batch, tgt_len, tgt_vocab) and attention (batch, tgt_len, src_len) or None.

        Teacher forcing; with ``sampling_prob`` > 0 (scheduled sampling), each sentence feeds
        its own previous prediction instead of the reference with that probability.
        ``only`` (n,): return logits (n, tgt_vocab) for these positions of the flattened
        (batch * tgt_len) only (training skips the output layer on padding)."""
        state = self.encode(src, src_lengths)
        if sampling_prob <= 0:
            out, attn = self.decoder(tgt_in, state)
            return self.logits(out, only), attn
        logits, attns = [], []
        prev = tgt_in[:, 0]
        for t in range(tgt_in.size(1)):
            if t > 0:
                own = torch.rand(prev.shape, device=prev.device) < sampling_prob
                prev = torch.where(own, logits[-1].argmax(-1), tgt_in[:, t])
            out, attn, state = self.decoder.step(self.decoder.embeddings(prev), state)
            logits.append(self.generator(out))
            attns.append(attn)
        logits = torch.stack(logits, 1)
        logits = logits if only is None else logits.flatten(0, 1).index_select(0, only)
        return logits, torch.stack(attns, 1) if self.has_attention else None

    def logits(self, out: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
        """The generator W_s h~ over decoder outputs (batch, tgt_len, hidden), or over the flat
        positions ``only`` of them (Luong eq. 6 before its softmax)."""
        return self.generator(out if only is None else out.flatten(0, 1).index_select(0, only))

    def step(self, tokens: torch.Tensor, state: State):
        """Search interface: previous tokens (batch,) -> log-probs (batch, vocab), attention, state."""
        emb = self.decoder.embeddings(tokens)
        out, attn, state = self.decoder.step(emb, state)
        return torch.log_softmax(self.generator(out), dim=-1, dtype=torch.float32), attn, state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
