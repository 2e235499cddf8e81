"""seq2seq-attn's decoding and analysis tools: ensembles, simple stopping, max_sent_l, n-best
rescoring (the oracle), n-best numbering and scoring without a model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PAIRS, fit, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import LEN, SRC, TABLE, W1, W2, ToyModel, V, random_table, table

from nmt import cli
from nmt.checkpoint import save_checkpoint
from nmt.engines.cuda_graphs import fixed_beam_search
from nmt.errors import NMTError
from nmt.evaluation import corpus_scores
from nmt.rescoring import oracle, sentence_gleu, sentence_scorer
from nmt.search import beam_search, greedy_search
from nmt.search.ensemble import Ensemble
from nmt.serving.translator import Translator
from nmt.vocabulary import BOS_ID, EOS_ID

BATCH = torch.tensor([[7, 8, 9], [7, 8, 0], [9, 0, 0]])
BATCH_LEN = torch.tensor([3, 2, 1])


class UniformAttentionToy(ToyModel):
    """The toy model with attention spread evenly over the real source."""

    def step(self, prev, state):
        logp, _, new = super().step(prev, state)
        mask = state["mask"].float()
        return logp, mask / mask.sum(1, keepdim=True), new


def search_all_ways(model, **kw):
    """The hypotheses of every driver: batched, one sentence at a time, fixed-shape (CUDA graphs' search)."""
    batched = beam_search(model, BATCH, BATCH_LEN, **kw)
    alone = [beam_search(model, BATCH[i : i + 1, : int(n)], BATCH_LEN[i : i + 1], **kw)[0]
             for i, n in enumerate(BATCH_LEN)]
    fixed = fixed_beam_search(model, BATCH, BATCH_LEN, **kw)
    return batched, alone, fixed


# ----------------------------------------------------------------------------- ensembles
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.sampled_from([0.0, 1.0]))
def test_an_ensemble_of_a_model_with_itself_is_the_model(seed, beam, alpha):
    model = ToyModel(random_table(torch.Generator().manual_seed(seed), 6, V))
    kw = dict(beam_size=beam, n_best=1, length_penalty=alpha, max_len_a=1, max_len_b=2)
    for plain, together in zip(search_all_ways(model, **kw), search_all_ways(Ensemble([model, model]), **kw)):
        for a, b in zip(plain, together):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


# Alone, model A says w1 (0.6 against 0.4) and model B says w2 (0.3 against 0.7); their mean says
# w2 (0.45 against 0.55), and ends there.
TABLE_A = table({(0, BOS_ID): {W1: 0.6, W2: 0.4}})
TABLE_B = table({(0, BOS_ID): {W1: 0.3, W2: 0.7}})


def test_an_ensemble_averages_the_probabilities_of_its_members():
    ensemble = Ensemble([ToyModel(TABLE_A), ToyModel(TABLE_B)])
    [[alone_a]] = greedy_search(ToyModel(TABLE_A), SRC, LEN, max_len_a=0, max_len_b=3)
    assert alone_a.tokens == [W1]
    [[greedy]] = greedy_search(ensemble, SRC, LEN, max_len_a=0, max_len_b=3)
    hyps = beam_search(ensemble, SRC, LEN, beam_size=2, n_best=2, max_len_a=0, max_len_b=3)[0]
    assert greedy.tokens == [W2] and greedy.score == pytest.approx(math.log(0.55), abs=1e-6)
    assert [h.tokens for h in hyps] == [[W2], [W1]]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.55), math.log(0.45)], abs=1e-6)


def test_an_ensembles_attention_is_the_mean_of_its_members():
    one_hot, uniform = ToyModel(TABLE), UniformAttentionToy(TABLE)
    kw = dict(beam_size=2, n_best=1, max_len_a=1, max_len_b=2)
    for ways in zip(*(search_all_ways(m, **kw) for m in (one_hot, uniform, Ensemble([one_hot, uniform])))):
        for a, b, mean in zip(*ways):
            assert torch.allclose(mean[0].attention, (a[0].attention + b[0].attention) / 2)


@pytest.fixture(scope="module")
def second_model(tiny_translator):
    """Another memorising model of the same vocabularies (another seed and attention)."""
    return fit(PAIRS, tiny_config("dot"), steps=250, seed=1, tgt_vocab=tiny_translator.checkpoint.tgt_vocab)


def test_an_ensemble_of_memorising_models_translates_their_pairs(tiny_translator, second_model):
    ensemble = Translator([tiny_translator.checkpoint, second_model.checkpoint], "cpu")
    sources = [s for s, _ in PAIRS]
    for engine in ({}, {"trace": False}, {"int8": True}, {"beam_size": 1}, {"inter_threads": 2}):
        found = ensemble.translate(sources, **engine)
        assert [t.text for t in found] == [t for _, t in PAIRS], engine
    one = ensemble.translate(sources[:1])[0]
    assert ensemble.translate(sources[:1], simple=True)[0].text == one.text


def test_attention_by_model_averages_to_the_ensembles_attention(tiny_translator, second_model):
    ensemble = Translator([tiny_translator.checkpoint, second_model.checkpoint], "cpu")
    found = ensemble.translate([s for s, _ in PAIRS[:3]], n_best=2, beam_size=3)
    for t in found:
        for rank, candidate in enumerate(t.n_best):
            by_model = ensemble.attention_by_model(t, rank)
            assert len(by_model) == 2 and by_model[0].shape == candidate.attention.shape
            assert abs((by_model[0] + by_model[1]) / 2 - candidate.attention).max() < 1e-5
            assert abs(by_model[0] - candidate.attention).max() > 1e-3  # (the members do differ)
    single = tiny_translator.translate([PAIRS[0][0]])[0]
    [own] = tiny_translator.attention_by_model(single)
    assert abs(own - single.attention).max() < 1e-5


def test_an_ensemble_scores_with_the_mean_distribution(tiny_translator):
    twice = Translator([tiny_translator.checkpoint, tiny_translator.checkpoint], "cpu")
    sources, targets = [s for s, _ in PAIRS[:4]], [t for _, t in PAIRS[:4]]
    for a, b in zip(tiny_translator.score(sources, targets), twice.score(sources, targets)):
        assert a.token_log_probs == pytest.approx(b.token_log_probs, abs=1e-5)
    with pytest.raises(NMTError, match="one model"):
        twice.neighbors(sources[0])


def test_an_ensemble_needs_the_same_vocabularies(tiny_translator):
    other = fit(PAIRS[:5], tiny_config("general"), steps=1)
    with pytest.raises(NMTError, match="model 2 of the ensemble has another source vocabulary"):
        Translator([tiny_translator.checkpoint, other.checkpoint], "cpu")


# ----------------------------------------------------------------------------- simple stopping
# At step 0 the best candidate is </s> (0.5); with length penalty 1, w1 </s> is better:
# log(0.45 * 0.99) / 2 > log(0.5) / 1. Exact stopping goes on and finds it; simple stops at once.
EARLY = table({(0, BOS_ID): {EOS_ID: 0.5, W1: 0.45, W2: 0.05}, (1, W1): {EOS_ID: 0.99, W2: 0.01}})


def test_simple_stops_when_the_top_of_the_beam_ends():
    model = ToyModel(EARLY)
    kw = dict(beam_size=2, n_best=1, length_penalty=1.0, max_len_a=1, max_len_b=2)
    for driver in zip(search_all_ways(model, **kw), search_all_ways(model, simple=True, **kw)):
        for exact, simple in zip(*driver):
            assert exact[0].tokens == [W1] and exact[0].score == pytest.approx(math.log(0.45 * 0.99) / 2, abs=1e-6)
            assert simple[0].tokens == [] and simple[0].score == pytest.approx(math.log(0.5), abs=1e-6)


def test_simple_search_records_only_the_steps_until_the_top_ends():
    """The one-sentence and the batched drivers both stop after step 0, where the top candidate is </s>."""
    from nmt.search.history import History

    for src, lengths in ((SRC, LEN), (SRC.repeat(2, 1), LEN.repeat(2))):
        history = History()
        beam_search(ToyModel(EARLY), src, lengths, beam_size=2, length_penalty=1.0, max_len_a=1, max_len_b=2,
                    simple=True, history=history)
        assert len(history.tokens) == 1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5))
def test_simple_equals_exact_stopping_for_the_best_without_a_length_penalty(seed, beam):
    """Without a length penalty, the step the top of the beam ends is the step exact search stops."""
    model = ToyModel(random_table(torch.Generator().manual_seed(seed), 6, V))
    kw = dict(beam_size=beam, n_best=1, max_len_a=1, max_len_b=2)
    for exact, simple in zip(search_all_ways(model, **kw), search_all_ways(model, simple=True, **kw)):
        assert [[h.tokens for h in s] for s in exact] == [[h.tokens for h in s] for s in simple]


# ----------------------------------------------------------------------------- max_sent_l
def test_a_source_longer_than_max_sent_l_is_refused_naming_its_line(tiny_translator):
    sources = ["Ein Hund .", "Ein Mann mit einem roten Hut liest ein Buch ."]
    with pytest.raises(NMTError, match=r"sentence 2 \(line 2 of a file\) has 10 tokens, more than max_sent_l 5"):
        tiny_translator.translate(sources, max_sent_l=5)
    assert len(tiny_translator.translate(sources, max_sent_l=10)) == 2


# ----------------------------------------------------------------------------- rescoring
def test_gleu_is_the_minimum_of_ngram_precision_and_recall():
    assert sentence_gleu("the cat sat", "the cat sat") == 100.0
    # hypothesis n-grams (order 2): a, cat, a cat = 3; reference: the, cat, sat, the cat, cat sat = 5; 1 match
    assert sentence_gleu("a cat", "the cat sat", order=2) == pytest.approx(100 / 5)
    assert sentence_gleu("", "the cat") == 0.0


def test_rescoring_picks_the_oracle_of_each_n_best_list():
    n_best = [["a dog runs .", "the cat sat on the mat .", "the cat sat on a mat ."],
              ["two men talk .", "two women talk ."],
              ["same", "same"]]
    references = ["the cat sat on the mat .", "two women talk .", "same"]
    for metric in ("bleu", "gleu"):
        assert oracle(n_best, references, metric) == [1, 1, 0]  # (a tie keeps the higher rank)
    score = sentence_scorer("bleu", 2)
    assert score("the cat", "the cat") == pytest.approx(100.0)
    with pytest.raises(ValueError, match="rescore"):
        sentence_scorer("meteor")


def test_evaluate_prints_the_oracles_corpus_scores(tmp_path, tiny_translator, capsys):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ckpt")
    (tmp_path / "src").write_text("".join(s + "\n" for s, _ in PAIRS[:6]))
    (tmp_path / "ref").write_text("".join(t + "\n" for _, t in PAIRS[:6]))
    args = ["evaluate", "--model", str(folder), "--src", str(tmp_path / "src"), "--ref", str(tmp_path / "ref")]
    assert cli.main([*args, "--rescore", "gleu", "--n-best", "3"]) == 0
    out = capsys.readouterr().out
    assert "oracle of the 3-best lists by sentence GLEU-4 (0 of 6 sentences changed)" in out
    assert out.count("BLEU = 100.00") == 2  # (the model has memorised its pairs: top and oracle agree)
    assert cli.main([*args, "--rescore", "bleu"]) == 2
    assert "--n-best 2 or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI: ensembles, numbering, score
def test_translate_numbers_n_best_lines_by_sentence_or_rank(tmp_path, tiny_translator, capsys):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ckpt")
    (tmp_path / "src").write_text(f"{PAIRS[0][0]}\n{PAIRS[1][0]}\n")
    args = ["translate", "--model", str(folder), str(folder), "--src", str(tmp_path / "src"), "--n-best", "2"]
    assert cli.main(args) == 0
    assert [line.split(" ||| ")[0] for line in capsys.readouterr().out.splitlines()] == ["0", "0", "1", "1"]
    assert cli.main([*args, "--n-best-numbering", "rank"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ||| ")[0] for line in lines] == ["1", "2", "1", "2"]
    assert lines[0].split(" ||| ")[1] == PAIRS[0][1]


def test_an_ensemble_of_other_vocabularies_is_a_clear_cli_error(tmp_path, tiny_translator, capsys):
    a = save_checkpoint(tiny_translator.checkpoint, tmp_path / "a")
    b = save_checkpoint(fit(PAIRS[:5], tiny_config("general"), steps=1).checkpoint, tmp_path / "b")
    (tmp_path / "src").write_text("Ein Hund .\n")
    assert cli.main(["translate", "--model", str(a), str(b), "--src", str(tmp_path / "src")]) == 2
    assert "error: model 2 of the ensemble has another source vocabulary" in capsys.readouterr().err


def test_score_takes_several_references_and_prints_bleu_chrf_and_ter(tmp_path, capsys):
    (tmp_path / "hyp").write_text("A dog runs on the grass .\nTwo men talk .\n")
    (tmp_path / "ref1").write_text("A dog runs on the grass .\nTwo women talk .\n")
    (tmp_path / "ref2").write_text("A dog is running on grass .\nTwo men talk .\n")
    assert cli.main(["score", "--hyp", str(tmp_path / "hyp"), "--ref", str(tmp_path / "ref1")]) == 0
    one = capsys.readouterr().out
    assert cli.main(["score", "--hyp", str(tmp_path / "hyp"), "--ref", str(tmp_path / "ref1"),
                     "--ref", str(tmp_path / "ref2")]) == 0
    two = capsys.readouterr().out
    hyps = (tmp_path / "hyp").read_text().splitlines()
    refs = [(tmp_path / f"ref{i}").read_text().splitlines() for i in (1, 2)]
    assert str(corpus_scores(hyps, *refs, ter=True)) in two
    assert "nrefs:1" in one and "nrefs:2" in two and "TER = " in two
    assert corpus_scores(hyps, *refs).bleu == pytest.approx(100.0) and corpus_scores(hyps, refs[0]).bleu < 90
    (tmp_path / "short").write_text("one line\n")
    assert cli.main(["score", "--hyp", str(tmp_path / "hyp"), "--ref", str(tmp_path / "short")]) == 2
    assert "has 1 lines but the source has 2" in capsys.readouterr().err
