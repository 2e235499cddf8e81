"""The attentional encoder-decoder (Luong et al. 2015): encoder, decoder, generator."""

from __future__ import annotations

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.model.bahdanau import BahdanauDecoder
from nmt.model.decoders import SENTENCE_KEYS, InputFeedDecoder, State
from nmt.model.embeddings import source_input, target_input
from nmt.model.encoders import RNNEncoder


class Seq2Seq(nn.Module):
    sentence_keys = SENTENCE_KEYS  # state entries shared by a sentence's hypotheses in search

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.src_vocab < 5 or cfg.tgt_vocab < 5:
            raise ValueError("vocabulary sizes must be set (src_vocab, tgt_vocab)")
        self.cfg = cfg
        src_emb, tgt_emb = source_input(cfg), target_input(cfg)
        self.encoder = RNNEncoder(src_emb, cfg.encoder_size, cfg.layers, cfg.brnn, cfg.dropout, cfg.reverse_src,
                                  cfg.rnn_type, cfg.brnn_merge, cfg.res_net, cfg.start_symbol)
        self.decoder = make_decoder(cfg, tgt_emb, self.encoder.output_size)
        if cfg.init_dec and cfg.bridge:  # one linear map for h (and one for an LSTM's c), encoder -> decoder size
            states = 2 if cfg.rnn_type == "lstm" else 1
            self.bridge = nn.ModuleList(nn.Linear(cfg.encoder_size, cfg.hidden) for _ in range(states))
        self.generator = nn.Linear(cfg.hidden, cfg.tgt_vocab)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.generator.weight = tgt_emb.weight

    def reset_parameters(self) -> None:
        if self.cfg.param_init > 0:
            for p in self.parameters():
                nn.init.uniform_(p, -self.cfg.param_init, self.cfg.param_init)
        with torch.no_grad():
            for emb in (self.encoder.embeddings, self.decoder.embeddings):
                emb.reset_padding()

    @property
    def has_attention(self) -> bool:
        return self.decoder.attention is not None

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> State:
        """Encode (batch, src_len) and return the decoder's initial state."""
        memory, (h, c) = self.encoder(src, lengths)  # h, c (layers, batch, encoder size); c None for a GRU
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)
        finals = [h] if c is None else [h, c]
        if not self.cfg.init_dec:
            finals = [s.new_zeros(*s.shape[:2], self.cfg.hidden) for s in finals]
        elif self.cfg.bridge:
            finals = [torch.tanh(bridge(s)) for bridge, s in zip(self.bridge, finals)]
        return self.decoder.init_state(memory, mask, *(s.transpose(0, 1) for s in finals))

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


def make_decoder(cfg: ModelConfig, tgt_emb: nn.Module, memory_size: int) -> nn.Module:
    """Luong's input-feeding decoder or Bahdanau's (``--decoder``), on the encoder's memory."""
    if cfg.decoder == "bahdanau":
        return BahdanauDecoder(tgt_emb, cfg.hidden, cfg.layers, cfg.attention, memory_size, cfg.dropout,
                               cfg.rnn_type, cfg.res_net)
    return InputFeedDecoder(tgt_emb, cfg.hidden, cfg.layers, cfg.attention, memory_size, cfg.input_feed,
                            cfg.dropout, cfg.rnn_type, cfg.res_net, cfg.multi_attn)
