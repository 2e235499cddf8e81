"""Questions about one translation, answered with the Translator's own tools.

* ``judge``: is a given translation one the model prefers to its own (then search missed it: a
  search error) or not (if the given one is right, the model is wrong: a model error)? The
  distinction of Niehues et al. / Stahlberg & Byrne ("On NMT search errors and model errors"),
  made for one sentence by scoring both translations with the same model and normalization.
* ``path_tokens``: the tokens from the root of a beam tree to one of its nodes (a "what if"
  prefix picked in the tree).
"""

from __future__ import annotations

from dataclasses import dataclass

from nmt.config import EngineConfig
from nmt.search.tree import BeamTree
from nmt.serving.scoring import Scored

TIE = 1e-5  # scores closer than this are equal (float32 sums of a few dozen log-probabilities)


@dataclass
class Verdict:
    yours: Scored  # the given translation, forced
    best: Scored  # the model's own best (beam search), forced the same way
    kind: str  # "same" (the model's own), "search error" (yours scores higher), "model error" (the model's does)
    beam_size: int

    @property
    def difference(self) -> float:
        """Your translation's score minus the model's best's (normalized scores)."""
        return self.yours.score - self.best.score

    @property
    def message(self) -> str:
        yours, best = f"{self.yours.score:.3f}", f"{self.best.score:.3f}"
        if self.kind == "same":
            return f"This is the model's own best translation (score {best})."
        if self.kind == "search error":
            return (f"Search error: the model scores your translation higher ({yours}) than the one beam search "
                    f"found ({best}), but a beam of {self.beam_size} did not find it. A wider beam might.")
        return (f"Model error: the model prefers its own translation ({best}) to yours ({yours}). If yours is "
                "the better translation, the model, not the search, is at fault.")


def judge(translator, source: str, translation: str, beam_size: int, alternatives: int = 5, **settings) -> Verdict:
    """Score ``translation`` and the model's own best (found with ``beam_size`` and ``settings`` of
    ``Translator.translate``; fp32, without UNK replacement, so both are the one model's scores)."""
    [best] = translator.translate([source], engine=EngineConfig(), beam_size=beam_size, n_best=1, replace_unk=False,
                                  **settings)
    alpha = settings.get("length_penalty")
    yours, own = translator.score([source, source], [translation, best.tokens], length_penalty=alpha,
                                  alternatives=alternatives)
    if yours.tokens == own.tokens:
        kind = "same"
    elif yours.score > own.score + TIE:
        kind = "search error"
    else:
        kind = "model error"
    return Verdict(yours, own, kind, beam_size)


def path_tokens(tree: BeamTree, node_id: int) -> list[str]:
    """The tokens from the first step to node ``node_id`` of ``tree`` (without a final </s>)."""
    nodes = {n.id: n for n in tree.nodes}
    if node_id not in nodes:
        raise KeyError(f"the beam tree has no node {node_id}")
    tokens, node = [], nodes[node_id]
    while node is not None:
        tokens.append(node.token)
        node = nodes[node.parent] if node.parent is not None else None
    tokens.reverse()
    return tokens[:-1] if tokens and tokens[-1] == "</s>" else tokens
