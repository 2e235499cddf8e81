"""A tiny model memorises 20 sentence pairs; translation must then be exact and consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PAIRS

from nmt.engines.search_engine import SearchEngine

KINDS = ("none", "dot", "general", "concat")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beam", [1, 5])
def test_overfit_model_translates_its_training_pairs_exactly(tiny_translators, kind, beam):
    results = tiny_translators[kind].translate([s for s, _ in PAIRS], beam_size=beam)
    assert [r.text for r in results] == [t for _, t in PAIRS]


@pytest.mark.parametrize("kind", KINDS)
def test_beam_one_is_greedy(tiny_translators, kind):
    import torch

    from nmt.data import pad
    from nmt.search import beam_search, greedy_search

    tr = tiny_translators[kind]
    sents = ["Ein Hund spielt im Park.", "Die Frau trägt einen Hut.", "Zwei Kinder essen Gemüse am Strand."]
    ids = [tr.checkpoint.src_vocab.encode(tr.src_tok.tokenize(s)) for s in sents]
    src, lengths = pad(ids), torch.tensor([len(i) for i in ids])
    g = greedy_search(tr.model, src, lengths)
    b = beam_search(tr.model, src, lengths, beam_size=1)
    assert [h[0].tokens for h in g] == [h[0].tokens for h in b]
    # float32 sums over batches that shrink differently as sentences end: equal up to rounding
    assert [h[0].score for h in g] == pytest.approx([h[0].score for h in b], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_translation_does_not_depend_on_the_batch(tiny_translators, kind):
    tr = tiny_translators[kind]
    sents = [s for s, _ in PAIRS[:8]] + ["Ein Hund und eine Katze spielen zusammen im großen Park.", "Hund."]
    together = tr.translate(sents, beam_size=4, n_best=3, batch_size=10)
    for batch_size in (1, 3):
        other = tr.translate(sents, beam_size=4, n_best=3, batch_size=batch_size)
        for a, b in zip(together, other):
            assert [c.tokens for c in a.n_best] == [c.tokens for c in b.n_best]
            assert [c.score for c in a.n_best] == pytest.approx([c.score for c in b.n_best], abs=1e-4)


@pytest.mark.parametrize("kind", ["dot", "general", "concat"])
def test_attention_rows_are_distributions_over_the_real_source(tiny_translators, kind):
    import torch

    tr = tiny_translators[kind]
    model = tr.model
    src = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    lengths = torch.tensor([4, 2])
    tgt_in = torch.tensor([[2, 5, 6], [2, 7, 0]])
    _, attn = model(src, lengths, tgt_in)  # (batch, tgt_len, src_len)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 3), atol=1e-5)
    assert torch.all(attn[1, :, 2:] == 0)
    for r in tr.translate(["Ein Hund läuft.", "Zwei Frauen sprechen miteinander."], beam_size=5, n_best=2):
        assert r.attention.shape == (len(r.tokens), len(r.src_tokens))
        np.testing.assert_allclose(r.attention.sum(1), 1.0, atol=1e-5)


def test_n_best_is_sorted_and_distinct(tiny_translator):
    [r] = tiny_translator.translate(["Ein Mann spielt im Park."], beam_size=5, n_best=5)
    scores = [c.score for c in r.n_best]
    assert len(r.n_best) == 5 and scores == sorted(scores, reverse=True)
    assert len({tuple(c.tokens) for c in r.n_best}) == 5
    assert r.text == r.n_best[0].text and r.score == scores[0]


def test_empty_sentence_gives_empty_translation(tiny_translator):
    results = tiny_translator.translate(["", "Ein Hund läuft."])
    assert results[0].text == "" and results[0].tokens == []
    assert results[1].text == "A dog runs."


def test_bad_settings_are_refused(tiny_translator):
    with pytest.raises(ValueError, match="n_best"):
        tiny_translator.translate(["Ein Hund."], beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="beam"):
        tiny_translator.translate(["Ein Hund."], beam_size=0)


def test_gold_scores_match_search_scores(tiny_translator):
    [r] = tiny_translator.translate(["Ein Hund läuft."], beam_size=5)
    [scored] = tiny_translator.score(["Ein Hund läuft."], [r.text])
    assert len(scored.token_log_probs) == len(r.tokens) + 1
    assert scored.log_prob == pytest.approx(r.score, abs=1e-4)  # length penalty 0: score is the log-probability


def test_int8_decoding_keeps_the_translations(tiny_translators):
    tr = tiny_translators["concat"]
    sents = [s for s, _ in PAIRS]
    fp32 = tr.translate(sents, beam_size=5)
    int8 = tr.translate(sents, beam_size=5, int8=True)
    assert [r.text for r in int8] == [r.text for r in fp32]
    assert [r.score for r in int8] == pytest.approx([r.score for r in fp32], abs=0.05)
    assert "quantized" in type(tr.engines.model_for(True).generator).__module__
    assert tr.engines.model_for(False) is tr.model  # the fp32 model is untouched


def test_batches_searched_at_once_give_the_same_translations(tiny_translators, monkeypatch):
    """inter_threads > 1 searches several batches at once, each with its share of the threads."""
    tr = tiny_translators["general"]
    sents = [s for s, _ in PAIRS] * 3
    seen = []
    search = SearchEngine.search
    monkeypatch.setattr(SearchEngine, "search", lambda *a: seen.append(torch.get_num_threads()) or search(*a))
    threads = torch.get_num_threads()
    one = tr.translate(sents, beam_size=3, n_best=2, batch_size=2)
    seen.clear()
    two = tr.translate(sents, beam_size=3, n_best=2, batch_size=2, inter_threads=2)
    assert len(seen) == (len(sents) + 1) // 2 and set(seen) == {max(1, threads // 2)}
    assert torch.get_num_threads() == threads  # restored
    for a, b in zip(one, two):
        assert [c.tokens for c in a.n_best] == [c.tokens for c in b.n_best]
        assert [c.score for c in a.n_best] == [c.score for c in b.n_best]
        assert np.array_equal(a.attention, b.attention)
    with pytest.raises(ValueError, match="inter_threads"):
        tr.translate(sents, inter_threads=-1)
