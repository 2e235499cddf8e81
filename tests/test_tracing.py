"""The traced decoder step (CPU search's default) gives exactly the eager step's results."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import PAIRS, tiny_config

from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.engines.search_engine import Engines
from nmt.engines.tracing import TracedSearchModel
from nmt.model.seq2seq import Seq2Seq
from nmt.search import beam_search, greedy_search
from nmt.serving.translator import Translator

SOURCES = [s for s, _ in PAIRS]


def same_translations(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert [c.tokens for c in x.n_best] == [c.tokens for c in y.n_best]
        assert [c.score for c in x.n_best] == [c.score for c in y.n_best]  # bit for bit
        assert np.array_equal(x.attention, y.attention) if x.attention is not None else y.attention is None


@pytest.mark.parametrize("kind", ["none", "dot", "general", "concat"])
@pytest.mark.parametrize("int8", [False, True])
def test_traced_search_equals_eager_search(tiny_translators, kind, int8):
    tr = tiny_translators[kind]
    # Traced on one sentence at beam 5, then replayed on other batch sizes, beams and lengths.
    tr.translate(SOURCES[:1], beam_size=5, int8=int8, trace=True)
    for beam, batch in ((5, 7), (3, 20), (1, 4)):
        eager = tr.translate(SOURCES, beam_size=beam, n_best=min(beam, 2), batch_size=batch, int8=int8, trace=False)
        traced = tr.translate(SOURCES, beam_size=beam, n_best=min(beam, 2), batch_size=batch, int8=int8, trace=True)
        same_translations(eager, traced)
    assert isinstance(tr.engines.model_for(int8, trace=True), TracedSearchModel)
    assert tr.engines.model_for(int8, trace=True).model is tr.engines.model_for(int8)  # one int8 copy for both


@pytest.mark.parametrize("options", [dict(layers=2), dict(input_feed=False), dict(bridge=True, layers=2),
                                     dict(attention="concat", brnn=False), dict(attention="none", layers=2)])
def test_one_trace_serves_every_shape(options):
    """Untrained models of other shapes: the trace made on the first batch holds no sizes."""
    torch.manual_seed(0)
    cfg = tiny_config(options.pop("attention", "general"), **options)
    cfg.src_vocab, cfg.tgt_vocab = 40, 30
    model = Seq2Seq(cfg).eval()
    traced = TracedSearchModel(model)
    gen = torch.Generator().manual_seed(1)
    for batch, beam in ((1, 5), (6, 3), (3, 1)):
        ids = [torch.randint(4, 40, (int(n),), generator=gen).tolist() for n in torch.randint(1, 12, (batch,), generator=gen)]
        src, lengths = pad(ids), torch.tensor([len(x) for x in ids])
        search = greedy_search if beam == 1 else beam_search
        kwargs = {} if beam == 1 else dict(beam_size=beam, n_best=2)
        for a, b in zip(search(model, src, lengths, **kwargs), search(traced, src, lengths, **kwargs), strict=True):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == [h.score for h in b]
            for ha, hb in zip(a, b):
                assert (ha.attention is None and hb.attention is None) or torch.equal(ha.attention, hb.attention)


def test_a_model_in_training_mode_is_not_traced():
    cfg = tiny_config("general", dropout=0.3)
    cfg.src_vocab, cfg.tgt_vocab = 20, 20
    with pytest.raises(ValueError, match="eval mode"):
        TracedSearchModel(Seq2Seq(cfg).train())


def test_gpu_translators_search_with_the_eager_model(tiny_translator):
    """(Tracing is a CPU measure.) The device check is the only difference."""
    engines = Engines(tiny_translator.model, torch.device("cuda"))
    assert engines.model_for(False, trace=True) is tiny_translator.model


def test_a_translator_follows_its_weights_changed_in_place(tiny_translator):
    """Training validates every epoch with one translator (Trainer._validation_translator), whose
    trace must read the weights as the optimizer leaves them, not as they were traced."""
    translator = Translator(copy.deepcopy(tiny_translator.checkpoint), "cpu")
    tokens = [translator.src_tok.tokenize(s) for s, _ in PAIRS[:4]]
    settings = DecodeConfig(beam_size=1, batch_size=64)
    before = translator.search_tokens(tokens, settings)
    assert (False, True) in translator.engines._models  # the traced step was made and is kept
    torch.manual_seed(0)
    with torch.no_grad():
        for p in translator.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = translator.search_tokens(tokens, settings)
    fresh = Translator(translator.checkpoint, "cpu").search_tokens(tokens, settings)
    assert [h[0].tokens for h in after] == [h[0].tokens for h in fresh] != [h[0].tokens for h in before]
    assert [h[0].score for h in after] == [h[0].score for h in fresh]


def test_past_the_trace_limit_models_search_eagerly_with_the_same_results(tiny_translators, monkeypatch):
    """TorchScript never frees a trace, so a process makes at most MAX_TRACES (a server that
    evicts and reloads models would grow without end); after that the eager step serves."""
    from nmt.engines import tracing

    ckpt = tiny_translators["general"].checkpoint
    monkeypatch.setattr(tracing, "MAX_TRACES", 1)
    monkeypatch.setattr(tracing, "_traces_made", 0)
    first, second = Translator(ckpt, "cpu"), Translator(ckpt, "cpu")
    assert isinstance(first.engines.model_for(False, trace=True), TracedSearchModel)
    assert second.engines.model_for(False, trace=True) is second.model
    a, b = (t.translate(SOURCES, beam_size=4, n_best=2, trace=True) for t in (first, second))
    assert [[(c.text, c.score) for c in r.n_best] for r in a] == [[(c.text, c.score) for c in r.n_best] for r in b]
