"""Attentional LSTM neural machine translation (in the line of harvardnlp/seq2seq-attn)."""

from nmt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nmt.config import DataConfig, DecodeConfig, EngineConfig, ModelConfig, TrainConfig, VocabConfig
from nmt.errors import CheckpointError, DataError, NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.search.tree import BeamTree, Node
from nmt.serving.neighbors import Neighbor
from nmt.serving.scoring import Scored
from nmt.serving.translator import Candidate, Translation, Translator
from nmt.tokenization import split_sentences

__all__ = ["BeamTree", "Candidate", "Checkpoint", "CheckpointError", "DataConfig", "DataError", "DecodeConfig",
           "EngineConfig", "ModelConfig", "NMTError", "Neighbor", "Node", "Scored", "Seq2Seq", "TrainConfig",
           "Translation", "Translator", "VocabConfig", "load_checkpoint", "save_checkpoint", "split_sentences"]
