"""Beam search against a scripted toy model whose step probabilities are chosen by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.search import beam_search, greedy_search
from nmt.search.topk import beam_topk, best_candidates, candidate_sums
from nmt.vocabulary import BOS_ID, EOS_ID

W1, W2 = 4, 5  # the toy vocabulary: 4 specials + two words
V = 6


class ToyModel:
    """log p(next | step t, previous token) comes from a table (steps, V, V).

    Attention at each step is one-hot on source position (previous token % src_len), so a
    hypothesis' attention history tells which tokens it was built from."""

    def __init__(self, probs: torch.Tensor):
        self.logp = probs.clamp_min(1e-30).log()

    def encode(self, src, lengths):
        n = src.size(0)
        return {"t": torch.zeros(n, dtype=torch.long), "mask": src != 0}

    def step(self, prev, state):
        t = state["t"].clamp(max=self.logp.size(0) - 1)
        logp = self.logp[t, prev]  # (rows, V)
        src_len = state["mask"].size(1)
        attn = torch.nn.functional.one_hot(prev % src_len, src_len).float()
        return logp, attn, {"t": state["t"] + 1, "mask": state["mask"]}


def table(rows: dict[tuple[int, int], dict[int, float]], steps: int = 4) -> torch.Tensor:
    """Probabilities: rows[(t, prev)] = {token: p}; unlisted rows end the sentence."""
    probs = torch.zeros(steps, V, V)
    probs[:, :, EOS_ID] = 1.0
    for (t, prev), dist in rows.items():
        probs[t, prev] = 0.0
        for tok, p in dist.items():
            probs[t, prev, tok] = p
    return probs


# Greedy takes w1 w1 (0.5 * 0.45 * 1); beam 2 finds w2 (0.4 * 0.95) which is better.
TABLE = table({
    (0, BOS_ID): {W1: 0.5, W2: 0.4, EOS_ID: 0.1},
    (1, W1): {W1: 0.45, W2: 0.35, EOS_ID: 0.2},
    (1, W2): {EOS_ID: 0.95, W1: 0.025, W2: 0.025},
})
SRC = torch.tensor([[7, 8]])
LEN = torch.tensor([2])


def test_greedy_follows_the_most_probable_token():
    [[hyp]] = greedy_search(ToyModel(TABLE), SRC, LEN, max_len_a=0, max_len_b=3)
    assert hyp.tokens == [W1, W1]
    assert hyp.score == pytest.approx(math.log(0.5 * 0.45 * 1.0), abs=1e-6)


def test_beam_finds_the_better_hypothesis_and_exact_n_best():
    hyps = beam_search(ToyModel(TABLE), SRC, LEN, beam_size=2, n_best=2, max_len_a=0, max_len_b=3)[0]
    assert [h.tokens for h in hyps] == [[W2], [W1, W1]]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.4 * 0.95), math.log(0.5 * 0.45)], abs=1e-6)


def test_length_penalty_divides_by_length_including_eos():
    hyps = beam_search(ToyModel(TABLE), SRC, LEN, beam_size=2, n_best=2, length_penalty=1.0, max_len_a=0, max_len_b=3)[0]
    expected = sorted([(math.log(0.4 * 0.95) / 2, [W2]), (math.log(0.5 * 0.45) / 3, [W1, W1]),
                       (math.log(0.5 * 0.35) / 3, [W1, W2])], reverse=True)[:2]
    assert [h.tokens for h in hyps] == [e[1] for e in expected]
    assert [h.score for h in hyps] == pytest.approx([e[0] for e in expected], abs=1e-6)


def test_attention_history_follows_its_own_hypothesis():
    hyps = beam_search(ToyModel(TABLE), SRC, LEN, beam_size=2, n_best=2, max_len_a=0, max_len_b=3)[0]
    for h in hyps:
        prevs = [BOS_ID] + h.tokens[:-1]
        expected = torch.nn.functional.one_hot(torch.tensor(prevs) % 2, 2).float()
        assert torch.equal(h.attention, expected)


def test_max_length_forces_the_end():
    never_ends = table({(t, p): {W1: 1.0} for t in range(4) for p in range(V)})
    hyps = beam_search(ToyModel(never_ends), SRC, LEN, beam_size=2, max_len_a=0, max_len_b=2)[0]
    assert hyps[0].tokens == [W1, W1]
    [[g]] = greedy_search(ToyModel(never_ends), SRC, LEN, max_len_a=0, max_len_b=2)
    assert g.tokens == [W1, W1]


def test_sentences_in_one_batch_do_not_interact():
    model = ToyModel(TABLE)
    src = torch.tensor([[7, 8, 9], [7, 8, 0]])
    lengths = torch.tensor([3, 2])
    together = beam_search(model, src, lengths, beam_size=2, n_best=2, max_len_a=1, max_len_b=1)
    alone = [beam_search(model, src[i : i + 1, : int(lengths[i])], lengths[i : i + 1], beam_size=2, n_best=2,
                         max_len_a=1, max_len_b=1)[0] for i in range(2)]
    for a, b in zip(together, alone):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b])


def exhaustive(probs: torch.Tensor, max_len: int, alpha: float):
    """All complete sequences (<= max_len words, then </s>) with their normalized scores."""
    logp = probs.clamp_min(1e-30).log()
    out = []
    for n in range(max_len + 1):
        for words in itertools.product((W1, W2), repeat=n):
            prev, score = BOS_ID, 0.0
            for t, w in enumerate(words + (EOS_ID,)):
                score += float(logp[min(t, logp.size(0) - 1), prev, w])
                prev = w
            out.append((score / (n + 1) ** alpha, list(words)))
    return sorted(out, key=lambda x: -x[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.05, 1.0), min_size=4 * 3 * 3, max_size=4 * 3 * 3), st.sampled_from([0.0, 0.6, 1.0]))
def test_wide_beam_is_exact_search(weights, alpha):
    """With a beam as wide as the whole search space, beam search returns the true best sequences."""
    probs = torch.zeros(4, V, V)
    w = torch.tensor(weights).view(4, 3, 3)
    for t in range(4):
        for i, prev in enumerate((BOS_ID, W1, W2)):
            probs[t, prev, [W1, W2, EOS_ID]] = w[t, i] / w[t, i].sum()
    max_len = 3
    best = exhaustive(probs, max_len, alpha)
    hyps = beam_search(ToyModel(probs), SRC, LEN, beam_size=8, n_best=3, length_penalty=alpha,
                       max_len_a=0, max_len_b=max_len)[0]
    assert [h.score for h in hyps] == pytest.approx([b[0] for b in best[:3]], abs=1e-5)
    assert hyps[0].tokens == best[0][1] or best[0][0] == pytest.approx(best[1][0], abs=1e-6)


def test_beam_one_equals_greedy_on_random_models():
    torch.manual_seed(0)
    for _ in range(20):
        probs = torch.softmax(torch.randn(5, V, V) * 2, -1)
        probs[:, :, :3] = 0
        probs = probs / probs.sum(-1, keepdim=True)
        g = greedy_search(ToyModel(probs), SRC, LEN, max_len_a=0, max_len_b=4)[0][0]
        b = beam_search(ToyModel(probs), SRC, LEN, beam_size=1, max_len_a=0, max_len_b=4)[0][0]
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([2, 3, 4]), st.sampled_from([0.0, 1.0]))
def test_checking_for_finished_sentences_less_often_changes_nothing(seed, check_every, alpha):
    """The GPU setting (look for ended sentences every few steps, fewer syncs) gives the same results."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(6, V, V, generator=gen) * 2, -1)
    probs[:, :, :3] = 0
    probs = probs / probs.sum(-1, keepdim=True)
    src = torch.tensor([[7, 8, 9], [7, 8, 0], [7, 0, 0]])
    lengths = torch.tensor([3, 2, 1])
    for search, kwargs in ((greedy_search, {}), (beam_search, {"beam_size": 3, "n_best": 2})):
        every_step, sparse = (search(ToyModel(probs), src, lengths, max_len_a=1, max_len_b=2, length_penalty=alpha,
                                     check_every=k, **kwargs) for k in (1, check_every))
        for a, b in zip(every_step, sparse):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
            assert all(torch.equal(x.attention, y.attention) for x, y in zip(a, b))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 700), st.integers(1, 12), st.integers(0, 10_000), st.booleans())
def test_beam_topk_is_a_plain_topk_over_beam_and_vocabulary(sentences, beam, vocab, k, seed, some_impossible):
    """The two-pass top-k that beam search uses equals torch.topk over offsets + log-probs."""
    k = min(k, beam * vocab)
    gen = torch.Generator().manual_seed(seed)
    logp = torch.randn(sentences * beam, vocab, generator=gen)
    offsets = torch.randn(sentences * beam, generator=gen) * 3
    if some_impossible:
        logp[logp < 0.5] = float("-inf")  # like forced ends
        offsets[1::2] = float("-inf")  # like the empty beams of the first step
    scores, rows, tokens = beam_topk(logp, offsets, beam, k, block=8)
    expected, index = (offsets.unsqueeze(1) + logp).view(sentences, beam * vocab).topk(k, dim=-1)
    assert torch.equal(scores, expected)
    assert bool(((tokens >= 0) & (tokens < vocab)).all())
    first = torch.arange(sentences).unsqueeze(1) * beam
    assert bool(((rows >= first) & (rows < first + beam)).all())  # a sentence's own beams
    possible = scores > float("-inf")
    assert torch.equal(rows[possible], (first + index // vocab)[possible])
    assert torch.equal(tokens[possible], (index % vocab)[possible])
    assert torch.equal(offsets[rows] + logp[rows, tokens], scores)


def test_beam_search_over_a_wide_vocabulary_matches_plain_topk(monkeypatch):
    """A vocabulary wide enough for beam_topk's two passes: same hypotheses as with torch.topk."""
    gen = torch.Generator().manual_seed(1)
    vocab = 1500  # at least 4 x 2K x TOPK_BLOCK for the two passes
    logp = torch.log_softmax(torch.randn(6, vocab, vocab, generator=gen) * 3, -1)

    class Wide(ToyModel):
        def __init__(self):
            self.logp = logp

    src = torch.tensor([[7, 8, 9], [7, 8, 0]])
    lengths = torch.tensor([3, 2])
    fast = beam_search(Wide(), src, lengths, beam_size=5, n_best=3, length_penalty=1.0, max_len_a=1, max_len_b=2)
    monkeypatch.setattr("nmt.search.topk.TOPK_BLOCK", 0)  # one plain topk
    plain = beam_search(Wide(), src, lengths, beam_size=5, n_best=3, length_penalty=1.0, max_len_a=1, max_len_b=2)
    for a, b in zip(fast, plain):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == [h.score for h in b]


def random_table(gen: torch.Generator, steps: int, vocab: int) -> torch.Tensor:
    """Step probabilities (steps, vocab, vocab) of a random toy model: no specials but </s>."""
    probs = torch.softmax(torch.randn(steps, vocab, vocab, generator=gen) * 2, -1)
    probs[:, :, :3] = 0
    return probs / probs.sum(-1, keepdim=True)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 3), st.sampled_from([0.0, 0.6, 1.0]),
       st.sampled_from([V, 1500]))
def test_one_sentence_alone_equals_the_batched_search(seed, beam, n_best, alpha, vocab):
    """A lone sentence on the CPU takes beam search's one-sentence path; in a batch it takes the
    batched one. Both give the same hypotheses, scores (bit for bit) and attention, with a small
    vocabulary (one plain top-k) and a wide one (blocks)."""
    n_best = min(n_best, beam)
    gen = torch.Generator().manual_seed(seed)
    model = ToyModel(random_table(gen, 6, vocab))
    src = torch.tensor([[7, 8, 9], [7, 8, 0], [9, 0, 0]])  # the first is the longest: same attention width
    lengths = torch.tensor([3, 2, 1])
    kwargs = dict(beam_size=beam, n_best=n_best, length_penalty=alpha, max_len_a=1, max_len_b=2)
    [alone] = beam_search(model, src[:1], lengths[:1], **kwargs)
    together = beam_search(model, src, lengths, **kwargs)[0]
    assert [h.tokens for h in alone] == [h.tokens for h in together]
    assert [h.score for h in alone] == [h.score for h in together]
    assert all(torch.equal(a.attention, b.attention) for a, b in zip(alone, together))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 700), st.integers(1, 12), st.integers(0, 10_000), st.booleans())
def test_best_candidates_of_one_sentence_are_a_plain_topk(beam, vocab, k, seed, some_impossible):
    k = min(k, beam * vocab)
    gen = torch.Generator().manual_seed(seed)
    logp = torch.randn(beam, vocab, generator=gen)
    offsets = torch.randn(beam, generator=gen) * 3
    if some_impossible:
        logp[logp < 0.5] = float("-inf")
        offsets[1::2] = float("-inf")
    scores, beams, tokens = best_candidates(logp, offsets, k, candidate_sums(beam * vocab))
    expected, index = (offsets.unsqueeze(1) + logp).view(-1).topk(k)
    assert scores == expected.tolist()
    assert all(0 <= b < beam and 0 <= t < vocab for b, t in zip(beams, tokens))
    assert [float(offsets[b] + logp[b, t]) for b, t in zip(beams, tokens)] == scores
    possible = [s > float("-inf") for s in scores]
    assert [b for b, p in zip(beams, possible) if p] == [int(i) // vocab for i, p in zip(index, possible) if p]
    assert [t for t, p in zip(tokens, possible) if p] == [int(i) % vocab for i, p in zip(index, possible) if p]


def test_the_history_records_every_steps_candidates_in_both_drivers():
    """The record a beam tree is drawn from: at every step each sentence's 2K best candidates
    (scores, rows they extend, tokens), the same from the lone-sentence driver as from the batched
    one, and each open hypothesis is a candidate: the K best that do not end, in order."""
    from nmt.search.history import History

    model = ToyModel(random_table(torch.Generator().manual_seed(3), 6, V))
    src, lengths, K = torch.tensor([[7, 8, 9], [7, 8, 0]]), torch.tensor([3, 2]), 3
    alone, batched = History(), History()
    beam_search(model, src[:1], lengths[:1], beam_size=K, history=alone)
    beam_search(model, src, lengths, beam_size=K, check_every=100, history=batched)  # (no sentence dropped)
    assert len(alone.candidates) == len(alone.tokens) > 1
    for t, (scores, rows, tokens) in enumerate(alone.candidates):
        b_scores, b_rows, b_tokens = (x[0].tolist() for x in batched.candidates[t])
        assert (scores, rows, tokens) == (b_scores, b_rows, b_tokens)
        going = [j for j in range(2 * K) if tokens[j] != EOS_ID][:K]
        assert alone.tokens[t].tolist() == [tokens[j] for j in going]
        assert alone.back[t].tolist() == [rows[j] for j in going]
