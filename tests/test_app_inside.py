"""The look-inside endpoints of app.py (/beam_tree, /what_if, /score, /neighbors) through gradio_client,
against a catalog of tiny memorising models, and the verdict rule of nmt.serving.inspection."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import PAIRS
from test_app import AppServer, app_env, build_catalog, free_port

from nmt.serving.inspection import judge, path_tokens
from nmt.serving.neighbors import IndexSettings, build_index
from nmt.serving.translator import Translator
from nmt.serving.scoring import Scored

SENTENCE = "Ein Hund läuft."


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_translators):
    tmp = tmp_path_factory.mktemp("app-inside")
    checkpoints = build_catalog(tmp / "checkpoints", tiny_translators)
    folder = checkpoints / "de-en-general"  # the only one with an index
    build_index(Translator.load(folder), [s for s, _ in PAIRS], [t for _, t in PAIRS],
                settings=IndexSettings(target_candidates=12, source_candidates=12, opq_iterations=5))
    with AppServer(app_env(checkpoints, tmp, free_port()), tmp / "server.log") as app:
        yield app


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def call(client, endpoint: str, *args, attention="general"):
    return client.predict(args[0], "de-en", attention, "", *args[1:], api_name=endpoint)


def test_the_beam_tree_is_the_searchs(client, tiny_translators):
    status, result = call(client, "/beam_tree", SENTENCE, 4)
    assert result["ok"], status
    translator = tiny_translators["general"]
    [plain] = translator.translate([SENTENCE], beam_size=4, replace_unk=False)
    nodes = {n["id"]: n for n in result["tree"]["nodes"]}
    assert [nodes[i]["token"] for i in result["tree"]["best_path"]] == plain.tokens + ["</s>"]
    assert result["translation"] == plain.text and result["tokens"] == plain.tokens
    assert result["best"]["words"] == plain.tokens + ["</s>"]
    assert len(result["best"]["alternatives"][0]) == 8 and result["tree"]["figure"]["data"]
    assert "Beam search of 4" in status


def test_what_if_continues_from_the_prefix(client, tiny_translators):
    status, result = call(client, "/what_if", SENTENCE, 5, "The dog", True)
    assert result["ok"], status
    [want] = tiny_translators["general"].translate([SENTENCE], beam_size=5, prefix=["The dog"])
    assert result["tokens"][:2] == ["The", "dog"] and result["forced"] == 2
    assert result["translation"] == want.text
    assert result["original"]["translation"] == "A dog runs."
    assert result["difference"] == pytest.approx(result["score"] - result["original"]["score"])
    tree = {n["id"]: n for n in result["tree"]["nodes"]}
    assert [tree[i]["token"] for i in result["tree"]["best_path"][:2]] == ["The", "dog"]
    assert result["attention_figure"]["data"][0]["z"]


@pytest.mark.parametrize("prefix,message", [
    ("", "Type a beginning"), ("A Zebrafisch", "cannot produce"), ("dog " * 101, "too long"),
])
def test_what_if_refuses_bad_prefixes(client, prefix, message):
    status, result = call(client, "/what_if", SENTENCE, 5, prefix, True)
    assert not result["ok"] and message in result["error"] and "⚠️" in status


def test_scoring_the_models_own_translation_and_a_worse_one(client):
    _, same = call(client, "/score", SENTENCE, 5, "A dog runs.")
    assert same["verdict"] == "same" and same["difference"] == pytest.approx(0.0, abs=1e-5)
    status, worse = call(client, "/score", SENTENCE, 5, "A cat runs.")
    assert worse["verdict"] == "model error" and worse["difference"] < 0 and "model error" in status
    assert worse["message"].startswith("Model error: the model prefers its own")
    yours = worse["yours"]
    assert yours["words"] == ["A", "cat", "runs", ".", "</s>"] and len(yours["token_log_probs"]) == 5
    assert yours["alternatives"][1][0]["word"] == "dog"  # what the model wanted instead of "cat"
    assert worse["model_best"]["translation"] == "A dog runs."
    assert yours["attention_figure"]["data"][0]["z"]


def test_scoring_explains_unknown_words_and_models_without_attention(client):
    status, result = call(client, "/score", SENTENCE, 5, "A Zebrafisch runs.")
    assert result["ok"] and result["unknown_words"] == ["Zebrafisch"] and "Unknown to the model" in status
    _, unknown = call(client, "/score", SENTENCE, 5, "Zebrafisch Okapi")
    assert not unknown["ok"] and "None of the words" in unknown["error"]
    _, empty = call(client, "/score", SENTENCE, 5, "   ")
    assert not empty["ok"] and "Type your translation" in empty["error"]
    status, none = call(client, "/score", SENTENCE, 5, "A dog runs.", attention="none")
    assert none["ok"] and none["yours"]["attention_figure"] is None and "no attention" in status


def test_neighbors_find_the_training_pair_of_a_training_sentence(client):
    """A training sentence's own states are nearest to themselves: its pair comes first, on both sides."""
    status, result = call(client, "/neighbors", SENTENCE, "A dog runs.", 1, "target", 3)
    assert result["ok"], status
    first = result["neighbors"][0]
    assert (first["source"], first["target"]) == PAIRS[0] and first["position"] == 1
    assert first["tokens"][first["position"]] == "dog" and result["word"] == "dog"
    assert first["distance"] == pytest.approx(0.0, abs=1e-3) and len(result["neighbors"]) == 3
    _, source_side = call(client, "/neighbors", SENTENCE, "", 1, "source", 3)
    assert source_side["neighbors"][0]["tokens"][source_side["neighbors"][0]["position"]] == "Hund"
    _, own = call(client, "/neighbors", SENTENCE, "", 1, "target", 3)  # (the model's own translation)
    assert own["ok"] and own["neighbors"][0]["target"] == "A dog runs."
    _, far = call(client, "/neighbors", SENTENCE, "A dog runs.", 40, "target", 3)
    assert not far["ok"] and "out of range" in far["error"]


def test_neighbors_without_an_index_say_so(client):
    _, result = call(client, "/neighbors", SENTENCE, "", 0, "target", 5, attention="dot")
    assert not result["ok"] and "index" in result["error"] and "python -m nmt index" in result["error"]
    with pytest.raises(Exception, match="not in the list of choices"):  # (Gradio checks the radio's choices)
        call(client, "/neighbors", SENTENCE, "", 0, "sideways", 5)
    with pytest.raises(Exception, match="greater than maximum value 20"):  # (and the slider's range)
        call(client, "/neighbors", SENTENCE, "", 0, "target", 500)


def test_every_n_best_candidate_has_its_own_attention(client):
    _, result = client.predict(SENTENCE, "de-en", "general", "", 5, 3, True, None, api_name="/translate")
    [row] = result["sentences"]
    for candidate in row["n_best"]:
        assert len(candidate["attention"]) == len(candidate["tokens"])
        assert all(len(r) == len(row["src_tokens"]) for r in candidate["attention"])
    best, figure = np.array(row["n_best"][0]["attention"]), np.array(row["attention_figure"]["data"][0]["z"])
    assert best == pytest.approx(figure, abs=1e-3)
    assert row["n_best"][1]["attention"] != row["n_best"][0]["attention"]


# ----------------------------------------------------------------------------- the verdict, on a scripted translator
def scored(tokens, score) -> Scored:
    return Scored("s", ["s"], " ".join(tokens), tokens, [score], score, score, None, [])


class ScriptedTranslator:
    """A translator whose best translation and scores are given: ``scores[translation] -> score``."""

    def __init__(self, best: list[str], scores: dict[str, float]):
        self.best, self.scores = best, scores

    def translate(self, sources, **_):
        return [SimpleNamespace(tokens=self.best)]

    def score(self, sources, translations, **_):
        return [scored(t.split() if isinstance(t, str) else list(t), self.scores[" ".join(t) if not isinstance(t, str)
                                                                                  else t]) for t in translations]


@pytest.mark.parametrize("yours,expected", [("a b", "same"), ("a c", "search error"), ("a d", "model error")])
def test_the_verdict_tells_search_errors_from_model_errors(yours, expected):
    translator = ScriptedTranslator(["a", "b"], {"a b": -1.0, "a c": -0.5, "a d": -2.0})
    verdict = judge(translator, "s", yours, beam_size=3)
    assert verdict.kind == expected
    assert verdict.difference == pytest.approx(translator.scores[yours] + 1.0)
    assert {"same": "own best", "search error": "Search error", "model error": "Model error"}[expected] in verdict.message


def test_a_tree_node_gives_its_path_as_a_prefix(tiny_translator):
    tree = tiny_translator.beam_tree(SENTENCE, beam_size=3)
    last = tree.best_path[-1]
    assert path_tokens(tree, last) == ["A", "dog", "runs", "."]
    assert path_tokens(tree, tree.best_path[1]) == ["A", "dog"]
    with pytest.raises(KeyError):
        path_tokens(tree, 10_000)
