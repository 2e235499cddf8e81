"""Shared fixtures: a tiny parallel corpus, tiny trained models, the shared Multi30k data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NMT_PROGRESS", "0")
os.environ.setdefault("NMT_MAX_TRACES", "100000")  # a test process makes many translators (see nmt/engines/tracing.py)
torch.set_num_threads(1)  # tiny models; also safe beside a training run

from nmt.checkpoint import Checkpoint  # noqa: E402
from nmt.config import ModelConfig  # noqa: E402
from nmt.data import ParallelDataset  # noqa: E402
from nmt.model.seq2seq import Seq2Seq  # noqa: E402
from nmt.serving.translator import Translator  # noqa: E402
from nmt.tokenization import get_tokenizer  # noqa: E402
from nmt.training.loss import sequence_loss  # noqa: E402
from nmt.vocabulary import Vocabulary  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"

PAIRS = [
    ("Ein Hund läuft.", "A dog runs."),
    ("Eine Frau singt.", "A woman sings."),
    ("Zwei Männer spielen Fußball.", "Two men play soccer."),
    ("Ein Kind lacht.", "A child laughs."),
    ("Die Katze schläft auf dem Sofa.", "The cat sleeps on the sofa."),
    ("Ein Mann fährt Fahrrad.", "A man rides a bike."),
    ("Drei Kinder spielen im Park.", "Three children play in the park."),
    ("Eine Frau liest ein Buch.", "A woman reads a book."),
    ("Der Hund springt über den Zaun.", "The dog jumps over the fence."),
    ("Ein Mädchen isst einen Apfel.", "A girl eats an apple."),
    ("Zwei Hunde rennen am Strand.", "Two dogs run on the beach."),
    ("Ein Junge wirft einen Ball.", "A boy throws a ball."),
    ("Eine Gruppe von Menschen tanzt.", "A group of people dances."),
    ("Der Mann trägt einen roten Hut.", "The man wears a red hat."),
    ("Ein Vogel sitzt auf dem Baum.", "A bird sits on the tree."),
    ("Die Frau trinkt Kaffee.", "The woman drinks coffee."),
    ("Ein alter Mann geht spazieren.", "An old man goes for a walk."),
    ("Kinder schwimmen im See.", "Children swim in the lake."),
    ("Ein Koch schneidet Gemüse.", "A cook cuts vegetables."),
    ("Zwei Frauen sprechen miteinander.", "Two women talk to each other."),
]


def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared Multi30k data not found at {SHARED}")
    return SHARED


def tiny_config(attention: str, **kw) -> ModelConfig:
    base = dict(emb_size=32, hidden=64, layers=1, brnn=True, attention=attention, dropout=0.0, param_init=0.1)
    base.update(kw)
    return ModelConfig(**base)


def fit(pairs, cfg: ModelConfig, steps: int = 300, lr: float = 0.01, seed: int = 0,
        tgt_vocab: Vocabulary | None = None) -> Translator:
    """Train a tiny model on ``pairs`` until it has memorised them (full batch)."""
    torch.manual_seed(seed)
    src_tok = [get_tokenizer("de").tokenize(s) for s, _ in pairs]
    tgt_tok = [get_tokenizer("en").tokenize(t) for _, t in pairs]
    src_vocab = Vocabulary.build(src_tok, 1000)
    tgt_vocab = tgt_vocab or Vocabulary.build(tgt_tok, 1000)
    cfg.src_vocab, cfg.tgt_vocab = len(src_vocab), len(tgt_vocab)
    model = Seq2Seq(cfg)
    data = ParallelDataset([src_vocab.encode(s) for s in src_tok], [tgt_vocab.encode(t) for t in tgt_tok])
    batch = data.make_batch(list(range(len(data))))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)
        loss, _ = sequence_loss(logits, batch.tgt_out, 0.0)
        opt.zero_grad()
        (loss / len(data)).backward()
        opt.step()
    model.eval()
    return Translator(Checkpoint(model, src_vocab, tgt_vocab, "de", "en"), "cpu")


_CACHE: dict = {}


def tiny(kind: str) -> Translator:
    """A memorising model with this attention kind, trained once per session."""
    if kind not in _CACHE:
        _CACHE[kind] = fit(PAIRS, tiny_config(kind), steps=250 if kind != "none" else 400)
    return _CACHE[kind]


@pytest.fixture(scope="session")
def tiny_translators():
    """One memorising model per attention kind."""
    return {kind: tiny(kind) for kind in ("none", "dot", "general", "concat")}


@pytest.fixture(scope="session")
def tiny_translator():
    return tiny("general")
