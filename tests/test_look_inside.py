"""Looking inside search and the model: forced prefixes, the beam tree, scoring a given translation.

The search-level tests run the scripted toy model of test_search (known probabilities, brute force
to compare with); the Translator-level ones a tiny memorising model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import PAIRS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import LEN, SRC, TABLE, W1, W2, ToyModel, V

from nmt.errors import NMTError
from nmt.search import beam_search, greedy_search
from nmt.search.core import forced_tokens
from nmt.search.history import History
from nmt.search.tree import build_tree
from nmt.vocabulary import EOS_ID

NAMES = {W1: "w1", W2: "w2", EOS_ID: "</s>"}


def random_model(seed: int) -> ToyModel:
    """A toy whose words and </s> have random probabilities (no ties) at every step."""
    probs = torch.rand(4, V, V, generator=torch.Generator().manual_seed(seed))
    probs[:, :, :4] = 0.0
    probs[:, :, EOS_ID] = torch.rand(4, V, generator=torch.Generator().manual_seed(seed + 1))
    return ToyModel(probs / probs.sum(-1, keepdim=True))


def toy_tree(beam: int, prefix: list[int] = (), length_penalty: float = 0.0, batched: bool = False, model=None):
    history = History()
    src, lengths = (SRC.repeat(2, 1), LEN.repeat(2)) if batched else (SRC, LEN)  # two sentences: the batched driver
    forced = forced_tokens([list(prefix)] * src.size(0), "cpu")
    [best, *_], *_ = beam_search(model or ToyModel(TABLE), src, lengths, beam_size=beam, max_len_a=0, max_len_b=3,
                                 length_penalty=length_penalty, history=history, forced=forced)
    return best, history


# ----------------------------------------------------------------------------- the beam tree
def test_the_tree_of_a_known_search():
    """Beam 2 on the toy: step 0 keeps w1 (0.5) and w2 (0.4), prunes </s> (0.1); step 1 finishes
    w2 </s> (0.38), keeps w1 w1 (0.225) and w1 w2 (0.175); w1 </s> (0.1) is pruned; w2 </s> wins."""
    best, history = toy_tree(2)
    nodes, path = build_tree(history, best, 2, 0.0, lambda t: NAMES.get(t, f"<{t}>"))
    seen = [(n.step, n.token, n.status, round(math.exp(n.score), 4)) for n in nodes if n.score > -20]
    assert seen == [(0, "w1", "kept", 0.5), (0, "w2", "kept", 0.4), (0, "</s>", "pruned", 0.1),
                    (1, "</s>", "finished", 0.38), (1, "w1", "kept", 0.225), (1, "w2", "kept", 0.175),
                    (1, "</s>", "pruned", 0.1)]
    assert [nodes[i].token for i in path] == ["w2", "</s>"]
    assert nodes[path[1]].parent == path[0] and nodes[path[0]].parent is None
    for node in nodes:
        parent = nodes[node.parent].score if node.parent is not None else 0.0
        assert node.score == pytest.approx(parent + node.logp, abs=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_the_tree_is_the_same_from_either_driver(batched):
    best, history = toy_tree(3, length_penalty=1.0, batched=batched, model=random_model(7))
    nodes, path = build_tree(history, best, 3, 1.0, str)
    ref_best, ref_history = toy_tree(3, length_penalty=1.0, model=random_model(7))
    ref_nodes, ref_path = build_tree(ref_history, ref_best, 3, 1.0, str)
    assert described(nodes) == described(ref_nodes)
    assert [nodes[i].token for i in path] == [ref_nodes[i].token for i in ref_path]
    assert nodes[path[-1]].normalized == pytest.approx(best.score, abs=1e-6)


def described(nodes) -> list[tuple]:
    """Each possible node (the toy's impossible tokens tie at log 1e-30, in any order) as its
    tokens from the root, status and score."""
    def tokens(node):
        return (tokens(nodes[node.parent]) if node.parent is not None else ()) + (node.token,)
    return sorted((tokens(n), n.status, round(n.score, 5)) for n in nodes if n.score > -20)


# ----------------------------------------------------------------------------- forced prefixes
def brute_force(logp: torch.Tensor, prefix: list[int], max_tokens: int) -> tuple[list[int], float]:
    """The most probable sequence (tokens before </s>, at most ``max_tokens``) that starts with ``prefix``."""
    best = (None, -math.inf)
    for n in range(len(prefix), max_tokens + 1):
        for rest in itertools.product(range(4, V), repeat=n - len(prefix)):
            seq, prev, total = list(prefix) + list(rest), 2, 0.0
            for t, tok in enumerate(seq + [EOS_ID]):
                total += float(logp[min(t, logp.size(0) - 1), prev, tok])
                prev = tok
            if total > best[1]:
                best = (seq, total)
    return best


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.lists(st.sampled_from([W1, W2]), max_size=3), st.booleans())
def test_search_continues_a_prefix_as_exhaustive_search_would(seed, prefix, batched):
    """A beam wider than every hypothesis is exact: from the prefix it finds the brute-force best."""
    model = random_model(seed)
    src, lengths = (SRC.repeat(2, 1), LEN.repeat(2)) if batched else (SRC, LEN)
    forced = forced_tokens([prefix] * src.size(0), "cpu")
    hyps = beam_search(model, src, lengths, beam_size=40, max_len_a=0, max_len_b=3, forced=forced)
    tokens, score = brute_force(model.logp, prefix, 3)
    for [hyp, *_] in hyps:
        assert hyp.tokens == tokens and hyp.score == pytest.approx(score, abs=1e-4)
    [[greedy]] = greedy_search(model, SRC, LEN, max_len_a=0, max_len_b=3, forced=forced_tokens([prefix], "cpu"))
    assert greedy.tokens[: len(prefix)] == prefix


def test_a_prefix_longer_than_the_length_limit_is_kept_whole():
    [[hyp]] = beam_search(ToyModel(TABLE), SRC, LEN, beam_size=2, max_len_a=0, max_len_b=1,
                          forced=forced_tokens([[W1, W1, W2]], "cpu"))
    assert hyp.tokens == [W1, W1, W2]


def test_the_forced_prefix_starts_the_translation(tiny_translator):
    for beam in (1, 3, 10):
        [r] = tiny_translator.translate(["Ein Hund läuft."], beam_size=beam, prefix=["The dog"])
        assert r.tokens[:2] == ["The", "dog"] and r.forced == 2
        assert all(c.tokens[:2] == ["The", "dog"] for c in r.n_best)
    [plain] = tiny_translator.translate(["Ein Hund läuft."], prefix=[""])
    assert plain.forced == 0 and plain.text == "A dog runs."


@pytest.mark.parametrize("beam,n_best", [(1, 1), (3, 2), (10, 4)])
def test_prefixes_of_different_lengths_in_one_batch_are_searched_as_one_by_one(tiny_translator, beam, n_best):
    sources = [s for s, _ in PAIRS[:6]]
    prefixes = ["", "A", "Two men", "", "The cat sleeps", "A man rides"]
    together = tiny_translator.translate(sources, beam_size=beam, n_best=n_best, prefix=prefixes)
    for source, prefix, r in zip(sources, prefixes, together):
        [alone] = tiny_translator.translate([source], beam_size=beam, n_best=n_best, prefix=[prefix])
        assert [c.tokens for c in r.n_best] == [c.tokens for c in alone.n_best]
        assert [c.score for c in r.n_best] == pytest.approx([c.score for c in alone.n_best], abs=1e-4)
        assert r.forced == len(prefix.split())


def test_a_prefix_the_model_cannot_produce_is_refused(tiny_translator):
    with pytest.raises(NMTError, match="cannot produce.*'Zebrafisch'"):
        tiny_translator.translate(["Ein Hund läuft."], prefix=["A Zebrafisch"])
    with pytest.raises(NMTError, match="one string per sentence"):
        tiny_translator.translate(["Ein Hund läuft.", "Ein Kind lacht."], prefix=["A"])
    with pytest.raises(NMTError, match="one string per sentence"):
        tiny_translator.translate(["Ein Hund läuft."], prefix="A")


# ----------------------------------------------------------------------------- scoring and the tree, on a model
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_scoring_the_best_hypothesis_gives_its_search_score(tiny_translator, length_penalty):
    sources = [s for s, _ in PAIRS[:8]]
    results = tiny_translator.translate(sources, beam_size=5, n_best=3, replace_unk=False,
                                        length_penalty=length_penalty)
    tokens = [c.tokens for r in results for c in r.n_best]
    scored = tiny_translator.score([r.source for r in results for _ in r.n_best], tokens, length_penalty=length_penalty)
    assert [s.score for s in scored] == pytest.approx([c.score for r in results for c in r.n_best], abs=1e-4)
    best = tiny_translator.score([r.source for r in results], [r.text for r in results], length_penalty=length_penalty)
    assert [s.score for s in best] == pytest.approx([r.score for r in results], abs=1e-4)  # (the text reads back)
    for s in scored:
        assert len(s.token_log_probs) == len(s.tokens) + 1 == len(s.alternatives) == s.attention.shape[0]
        assert s.log_prob == pytest.approx(sum(s.token_log_probs))
        assert s.attention.sum(1) == pytest.approx([1.0] * s.attention.shape[0], abs=1e-4)


def test_alternatives_are_the_most_probable_words(tiny_translator):
    [s] = tiny_translator.score(["Ein Hund läuft."], ["A cat runs."], alternatives=3)
    assert s.tokens == ["A", "cat", "runs", "."]
    assert s.alternatives[1][0][0] == "dog"  # what the model wanted instead of "cat"
    assert s.token_log_probs[1] < math.log(s.alternatives[1][0][1])
    for position in s.alternatives:
        probs = [p for _, p in position]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6


def test_scoring_reads_unknown_words_as_unk(tiny_translator):
    [s] = tiny_translator.score(["Ein Hund läuft."], ["A Zebrafisch </s> runs."])
    assert "<unk>" in s.tokens and "</s>" not in s.tokens
    [empty] = tiny_translator.score([""], ["A dog."])
    assert empty.token_log_probs == [] and empty.score == 0.0
    with pytest.raises(NMTError, match="1 source sentences but 2"):
        tiny_translator.score(["Ein Hund läuft."], ["A", "B"])


@pytest.mark.parametrize("beam,length_penalty", [(1, 0.0), (5, 0.0), (10, 1.0)])
def test_the_beam_trees_best_path_is_the_translation(tiny_translator, beam, length_penalty):
    for source, _ in PAIRS[:5]:
        [r] = tiny_translator.translate([source], beam_size=beam, length_penalty=length_penalty, replace_unk=False)
        tree = tiny_translator.beam_tree(source, beam_size=beam, length_penalty=length_penalty)
        nodes = {n.id: n for n in tree.nodes}
        assert [nodes[i].token for i in tree.best_path] == r.tokens + ["</s>"]
        assert tree.translation == r.text and nodes[tree.best_path[-1]].normalized == pytest.approx(r.score, abs=1e-5)
        assert nodes[tree.best_path[-1]].status == "finished"
        assert all(nodes[i].status == "kept" for i in tree.best_path[:-1])
        [s] = tiny_translator.score([source], [r.text], length_penalty=length_penalty)
        assert [nodes[i].logp for i in tree.best_path] == pytest.approx(s.token_log_probs, abs=1e-4)
        for node in tree.nodes:
            assert node.status in ("kept", "pruned", "finished")
            if node.parent is None:
                assert node.step == 0
            else:
                parent = nodes[node.parent]
                assert parent.status == "kept" and parent.step == node.step - 1
                assert node.score == pytest.approx(parent.score + node.logp, abs=1e-5)
        for step in range(max(n.step for n in tree.nodes) + 1):
            assert sum(n.step == step and n.status == "kept" for n in tree.nodes) <= beam


def test_a_tree_from_a_prefix(tiny_translator):
    tree = tiny_translator.beam_tree("Ein Hund läuft.", beam_size=4, prefix="The")
    assert tree.forced == 1 and tree.translation.startswith("The ")
    assert [n.token for n in tree.nodes if n.step == 0] == ["The"]
    with pytest.raises(NMTError, match="empty"):
        tiny_translator.beam_tree("   ")
