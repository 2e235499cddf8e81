"""The fixed-shape beam search that CUDA graphs replay (nmt.engines.cuda_graphs), run eagerly on the
CPU: the same hypotheses, scores and attention as beam_search. The graphs themselves are tested
in test_cuda.py (they need a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import PAIRS, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import ToyModel, V, random_table

from nmt.data import pad
from nmt.engines.cuda_graphs import GraphedBeamSearch, fixed_beam_search
from nmt.model.seq2seq import Seq2Seq
from nmt.search import beam_search


def assert_same(expected, got, exact: bool = True):
    """Same hypotheses; scores and attention bit for bit, or (``exact=False``, for a real model,
    whose matrix products may round differently once beam_search drops sentences from the
    batch) up to float rounding."""
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == ([h.score for h in b] if exact else pytest.approx([h.score for h in b], abs=1e-5))
        for x, y in zip(a, b):
            if x.attention is None:
                assert y.attention is None
            else:
                assert torch.equal(x.attention, y.attention) if exact else torch.allclose(x.attention, y.attention, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 3), st.sampled_from([0.0, 0.6, 1.0]),
       st.sampled_from([V, 1500]), st.integers(1, 5))
def test_fixed_shape_search_equals_beam_search_on_random_models(seed, beam, n_best, alpha, vocab, check_every):
    """Sentences of different lengths stop at different steps; the fixed-shape search keeps
    them in the batch and records each one's results when it stops, however rarely it looks."""
    n_best = min(n_best, beam)
    gen = torch.Generator().manual_seed(seed)
    model = ToyModel(random_table(gen, 6, vocab))
    src = torch.tensor([[7, 8, 9, 7], [7, 8, 0, 0], [9, 0, 0, 0], [8, 9, 7, 0]])
    lengths = torch.tensor([4, 2, 1, 3])
    kwargs = dict(beam_size=beam, n_best=n_best, length_penalty=alpha, max_len_a=1, max_len_b=2)
    assert_same(beam_search(model, src, lengths, **kwargs),
                fixed_beam_search(model, src, lengths, check_every=check_every, **kwargs))


def batch_of(translator, sentences):
    ids = [translator.checkpoint.src_vocab.encode(translator.src_tok.tokenize(s)) for s in sentences]
    return pad(ids), torch.tensor([len(x) for x in ids])


@pytest.mark.parametrize("kind", ["none", "dot", "general", "concat"])
def test_fixed_shape_search_equals_beam_search_on_trained_models(tiny_translators, kind):
    model = tiny_translators[kind].model
    src, lengths = batch_of(tiny_translators[kind], [s for s, _ in PAIRS[:7]] + ["Ein Hund schläft im Park."])
    for beam, n_best, alpha in ((1, 1, 0.0), (5, 3, 0.0), (4, 2, 1.0)):
        kwargs = dict(beam_size=beam, n_best=n_best, length_penalty=alpha)
        assert_same(beam_search(model, src, lengths, **kwargs), fixed_beam_search(model, src, lengths, **kwargs), exact=False)


def test_fixed_shape_search_equals_beam_search_on_an_untrained_model(tiny_translator):
    """Random weights: long, uncertain hypotheses that run into the length limit."""
    torch.manual_seed(5)
    cfg = tiny_config("general")
    cfg.src_vocab, cfg.tgt_vocab = len(tiny_translator.checkpoint.src_vocab), len(tiny_translator.checkpoint.tgt_vocab)
    model = Seq2Seq(cfg).eval()
    src, lengths = batch_of(tiny_translator, [s for s, _ in PAIRS[:6]])
    kwargs = dict(beam_size=5, n_best=5, length_penalty=0.6, max_len_a=1.0, max_len_b=3)
    expected = beam_search(model, src, lengths, **kwargs)
    assert max(len(h.tokens) for hyps in expected for h in hyps) == int(lengths.max()) + 3
    assert_same(expected, fixed_beam_search(model, src, lengths, check_every=3, **kwargs), exact=False)


def test_graphed_search_refuses_what_it_cannot_capture(tiny_translator):
    src, lengths = batch_of(tiny_translator, ["Ein Hund läuft."])
    with pytest.raises(ValueError, match="CUDA"):
        GraphedBeamSearch(tiny_translator.model)(src, lengths)
    with pytest.raises(ValueError, match="n_best"):
        fixed_beam_search(tiny_translator.model, src, lengths, beam_size=2, n_best=3)
    training = Seq2Seq(tiny_translator.model.cfg).train()
    with pytest.raises(ValueError, match="eval mode"):
        GraphedBeamSearch(training)
