"""The network, as the papers write it (Luong et al. 2015; Bahdanau et al. 2015 for concat):
word embeddings, a (bi-)LSTM encoder, global attention, an LSTM decoder with input feeding, and the
encoder-decoder that joins them. Nothing here exists only for speed: that lives in ``nmt.engines``."""

from nmt.model.decoders import SENTENCE_KEYS, State
from nmt.model.seq2seq import Seq2Seq

__all__ = ["SENTENCE_KEYS", "Seq2Seq", "State"]
