"""Attentional LSTM neural machine translation (in the line of harvardnlp/seq2seq-attn)."""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import DataConfig, DecodeConfig, ModelConfig, TrainConfig, VocabConfig
from .errors import CheckpointError, DataError, NMTError
from .model import Seq2Seq
from .tokenization import split_sentences
from .translator import Candidate, Translation, Translator

__all__ = ["Checkpoint", "CheckpointError", "Candidate", "DataConfig", "DataError", "DecodeConfig", "ModelConfig",
           "NMTError", "Seq2Seq", "TrainConfig", "Translation", "Translator", "VocabConfig", "load_checkpoint",
           "save_checkpoint", "split_sentences"]
