"""Input layers: map a sentence's tokens to vectors.

Each input layer is a module with ``forward(tokens) -> (..., output_size)`` and an ``output_size``
attribute, so the encoder and decoder do not care what the input is:

* ``WordEmbeddings``: a vector per word id.
* ``CharCNN``: a word from its characters (Kim et al. 2016, "Character-Aware Neural Language
  Models", section 2): characters embedded, one convolution of ``kernel_width`` over them with
  ``num_kernels`` filters and tanh, max-pooled over the word (eq. 1-3), then highway layers
  (eq. 8): z = t * g(W_H y + b_H) + (1 - t) * y with the gate t = sigmoid(W_T y + b_T). Each
  distinct word of a batch is computed once.
* ``SourceInput``: the word's vector (embedding or characters) concatenated with one embedding
  per source word feature (seq2seq-attn's ``word-|-feat1-|-feat2``), then dropout.
* ``TargetCharEmbeddings``: the decoder's previous word through the char-CNN, from a table of the
  target vocabulary's spellings (the output vocabulary stays words).

Source token ids (``nmt.inputs.SourceInputs``) are (batch, len) word ids for a word model, or
(batch, len, columns) rows: the word's id or its ``max_word_length`` character ids, then one id
per feature.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.dropout import Dropout
from nmt.vocabulary import PAD_ID


class WordEmbeddings(nn.Module):
    """Word embeddings followed by dropout."""

    def __init__(self, vocab_size: int, emb_size: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=PAD_ID)
        self.dropout = Dropout(dropout)
        self.output_size = emb_size

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def reset_padding(self) -> None:
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(tokens))


class Highway(nn.Module):
    """Highway layers (Srivastava et al. 2015; Kim et al. 2016 eq. 8), g = ReLU."""

    def __init__(self, size: int, layers: int):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        self.gates = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for transform, gate in zip(self.transforms, self.gates):
            t = torch.sigmoid(gate(y))
            y = t * torch.relu(transform(y)) + (1 - t) * y
        return y


class CharCNN(nn.Module):
    """Words (..., max_word_length) of character ids -> (..., num_kernels) vectors."""

    def __init__(self, char_vocab: int, char_vec_size: int, kernel_width: int, num_kernels: int, highway: int):
        super().__init__()
        self.chars = nn.Embedding(char_vocab, char_vec_size, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(char_vec_size, num_kernels, kernel_width)
        self.highway = Highway(num_kernels, highway)
        self.kernel_width, self.output_size = kernel_width, num_kernels

    def reset_padding(self) -> None:
        with torch.no_grad():
            self.chars.weight[PAD_ID].zero_()

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        flat = words.reshape(-1, words.size(-1))  # (n, max_word_length)
        distinct, where = torch.unique(flat, dim=0, return_inverse=True)  # each distinct word once
        # Padded to a multiple of 64 words (empty ones): every batch has another number of distinct words,
        # and oneDNN keeps kernels (and their memory) for each shape it meets, as training's output rows do.
        distinct = nn.functional.pad(distinct, (0, 0, 0, -distinct.size(0) % 64))
        return self.spell(distinct).index_select(0, where).view(*words.shape[:-1], self.output_size)

    def spell(self, words: torch.Tensor) -> torch.Tensor:
        """(n, max_word_length) distinct words -> (n, num_kernels).

        Eq. 1-3, y_k = max_t tanh(w_k . C[:, t:t+w] + b_k) over the windows t of the word, computed as
        tanh(max_t(w_k . C[:, t:t+w]) + b_k): the same (tanh rises, b_k does not depend on t), with the tanh
        and the bias on one vector per word instead of every position, and the convolution as one matrix
        product over the windows. Windows past the word's end (only padding) are left out: their score, 0,
        would otherwise floor every filter's maximum at 0 for all but the longest words."""
        x = self.chars(words)  # (n, max_word_length, char_vec_size)
        if x.size(1) < self.kernel_width:  # (a word table narrower than the kernel: pad with <blank>'s zeros)
            x = nn.functional.pad(x, (0, 0, 0, self.kernel_width - x.size(1)))
        windows = x.unfold(1, self.kernel_width, 1)  # (n, positions, char_vec_size, kernel_width)
        weight = self.conv.weight.reshape(self.conv.out_channels, -1)  # (num_kernels, char_vec_size * kernel_width)
        scores = nn.functional.linear(windows.reshape(*windows.shape[:2], -1), weight)  # (n, positions, num_kernels)
        last = ((words != PAD_ID).sum(1) - self.kernel_width).clamp(min=0)  # (n,) the last window within the word
        beyond = torch.arange(scores.size(1), device=words.device).unsqueeze(0) > last.unsqueeze(1)  # (n, positions)
        scores = scores.masked_fill(beyond.unsqueeze(-1), float("-inf"))
        return self.highway(torch.tanh(scores.max(dim=1).values + self.conv.bias))


class SourceInput(nn.Module):
    """The encoder's input: the word's vector (``words``: WordEmbeddings' table or a CharCNN) and
    an embedding per word feature, concatenated, then dropout."""

    def __init__(self, words: nn.Module, word_columns: int, feature_vocabs: tuple[int, ...], feature_sizes: list[int],
                 dropout: float):
        super().__init__()
        self.words, self.word_columns = words, word_columns  # 1 (a word id) or max_word_length (its characters)
        self.features = nn.ModuleList(nn.Embedding(n, size, padding_idx=PAD_ID) for n, size in zip(feature_vocabs, feature_sizes))
        self.dropout = Dropout(dropout)
        self.output_size = words.output_size + sum(feature_sizes)

    @property
    def weight(self) -> nn.Parameter:
        return self.words.weight  # (a word table: pretrained vectors land here)

    def reset_padding(self) -> None:
        self.words.reset_padding()
        with torch.no_grad():
            for feature in self.features:
                feature.weight[PAD_ID].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, len, columns) token rows -> (batch, len, output_size)."""
        cols = self.word_columns
        word = tokens[..., 0] if cols == 1 else tokens[..., :cols]
        parts = [self.words(word)] + [emb(tokens[..., cols + i]) for i, emb in enumerate(self.features)]
        return self.dropout(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])


class TargetCharEmbeddings(nn.Module):
    """The decoder's input word (target ids) through the char-CNN. ``spelling`` (vocab, max_word_length)
    holds each target word's character ids: set from the vocabularies (``set_spelling``), not trained.

    Training spells each distinct word of a batch once. In evaluation every word of the vocabulary
    is spelt once and looked up (search feeds the same few words again and again, and a lookup has
    the fixed shapes a CUDA graph needs); the table is made again whenever the weights change."""

    def __init__(self, cnn: CharCNN, vocab_size: int, max_word_length: int, dropout: float):
        super().__init__()
        self.cnn = cnn
        self.register_buffer("spelling", torch.zeros(vocab_size, max_word_length, dtype=torch.long), persistent=False)
        self.dropout = Dropout(dropout)
        self.output_size = cnn.output_size
        self._table: tuple[tuple, torch.Tensor] | None = None  # (the weights' versions, (vocab, num_kernels))

    def set_spelling(self, spelling: torch.Tensor) -> None:
        if spelling.shape != self.spelling.shape:
            raise ValueError(f"the target spellings are {tuple(spelling.shape)}, the model expects {tuple(self.spelling.shape)}")
        self.spelling.copy_(spelling)

    def reset_padding(self) -> None:
        self.cnn.reset_padding()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(...) target ids -> (..., output_size)."""
        if not self.training:
            return self.vocabulary_vectors().index_select(0, tokens.reshape(-1)).view(*tokens.shape, self.output_size)
        distinct, where = torch.unique(tokens.reshape(-1), return_inverse=True)
        vectors = self.cnn.spell(self.spelling.index_select(0, distinct))  # (distinct, num_kernels)
        return self.dropout(vectors.index_select(0, where).view(*tokens.shape, self.output_size))

    def vocabulary_vectors(self) -> torch.Tensor:
        """Every target word spelt: (vocab, num_kernels), remade when a weight or the spelling changed."""
        versions = tuple(t._version for t in (*self.cnn.parameters(), self.spelling))
        if self._table is None or self._table[0] != versions or self._table[1].device != self.spelling.device:
            with torch.no_grad():  # (in chunks: the convolution's output is words x kernels x positions)
                self._table = versions, torch.cat([self.cnn.spell(c) for c in self.spelling.split(1024)])
        return self._table[1]


def feature_sizes(feature_vocabs: tuple[int, ...], fixed: int, exponent: float) -> list[int]:
    """Each feature's embedding size: ``fixed``, or N ** exponent for N values (seq2seq-attn's
    ``feature_embeddings_dim_exponent``), at least 1."""
    return [fixed if fixed > 0 else max(1, int(round(n ** exponent))) for n in feature_vocabs]


def source_input(cfg) -> nn.Module:
    """The encoder's input layer for a ``ModelConfig``: word embeddings, or characters, with features."""
    if not cfg.use_chars_enc and not cfg.feature_vocabs:
        return WordEmbeddings(cfg.src_vocab, cfg.emb_size, cfg.dropout)
    if cfg.use_chars_enc:
        words, columns = char_cnn(cfg), cfg.max_word_length
    else:
        words, columns = WordEmbeddings(cfg.src_vocab, cfg.emb_size), 1  # (no dropout: SourceInput's, once)
    sizes = feature_sizes(cfg.feature_vocabs, cfg.feature_vec_size, cfg.feature_embeddings_dim_exponent)
    return SourceInput(words, columns, cfg.feature_vocabs, sizes, cfg.dropout)


def target_input(cfg) -> nn.Module:
    """The decoder's input layer: word embeddings, or the previous word's characters."""
    if cfg.use_chars_dec:
        return TargetCharEmbeddings(char_cnn(cfg), cfg.tgt_vocab, cfg.max_word_length, cfg.dropout)
    return WordEmbeddings(cfg.tgt_vocab, cfg.emb_size, cfg.dropout)


def char_cnn(cfg) -> CharCNN:
    if cfg.char_vocab < 5:
        raise ValueError("character inputs need the character vocabulary's size (char_vocab, set from the data)")
    return CharCNN(cfg.char_vocab, cfg.char_vec_size, cfg.kernel_width, cfg.num_kernels, cfg.num_highway_layers)
