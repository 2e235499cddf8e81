"""The beam tree: every candidate a beam search weighed, drawn from its ``History``.

At each step the core (``nmt.search.core.beam_step``) takes each sentence's 2K best candidates:
those ending in </s> among the K best finish, the K best others go on, the rest are pruned. The
history keeps those candidates, so the tree is the search's own record, not a second search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nmt.search.core import Hypothesis
from nmt.search.history import History
from nmt.search.topk import NEG_INF
from nmt.vocabulary import EOS_ID


@dataclass
class Node:
    id: int
    parent: int | None  # the node this one extends; None at the first step
    step: int  # 0 for the first output token
    token: str
    logp: float  # log p(token | source, the parent's tokens)
    score: float  # cumulative log-probability: the parent's score + logp
    normalized: float  # score / (step + 1) ** length_penalty: its score if the hypothesis ended here
    status: str  # "kept" (goes on), "pruned" (dropped) or "finished" (ends in </s>)


@dataclass
class BeamTree:
    source: str
    src_tokens: list[str]
    nodes: list[Node]
    best_path: list[int]  # node ids of the winning hypothesis, first token to </s>
    beam_size: int = 5
    length_penalty: float = 0.0
    forced: int = 0  # the leading tokens that were forced (a prefix)
    translation: str = ""  # the winning hypothesis, detokenized


def build_tree(history: History, best: Hypothesis, K: int, length_penalty: float,
               token_str: Callable[[int], str]) -> tuple[list[Node], list[int]]:
    """The nodes of a one-sentence search's ``history`` and the path of its ``best`` hypothesis
    (of a batch's history: its first sentence's, while no sentence has left the batch).

    Each step's candidates (score, the row of the previous step they extend, token) become nodes;
    a candidate is kept when it is one of the open hypotheses the step went on with (the history's
    (row, token) pairs: a pair names one hypothesis), finished when it ends in </s> among the K best,
    pruned otherwise. Candidates scored -inf (impossible: a forced prefix, an empty beam) are left out."""
    nodes: list[Node] = []
    children: dict[tuple[int | None, int], int] = {}  # (parent node, token id) -> node of the kept and finished
    kept_rows: dict[int, int] = {}  # row of the previous step -> its node
    for step, (candidates, back, tokens) in enumerate(zip(history.candidates, history.back, history.tokens)):
        by_pair = {}
        for j, (score, row, token) in enumerate(zip(*(_first_sentence(c) for c in candidates))):
            parent = kept_rows.get(row) if step else None
            if score == NEG_INF or (step and parent is None):
                continue
            logp = score - (nodes[parent].score if parent is not None else 0.0)
            status = "finished" if token == EOS_ID and j < K else "pruned"
            nodes.append(Node(len(nodes), parent, step, token_str(token), logp, score,
                              score / (step + 1) ** length_penalty, status))
            by_pair[row, token] = nodes[-1].id
            if status == "finished":
                children[parent, token] = nodes[-1].id
        kept_rows = {}
        for g, pair in enumerate(zip(back[:K].tolist(), tokens[:K].tolist())):
            if pair in by_pair:
                node = nodes[by_pair[pair]]
                node.status, kept_rows[g] = "kept", node.id
                children[node.parent, pair[1]] = node.id
    return nodes, _path(children, best.tokens + [EOS_ID])


def _path(children: dict, tokens: list[int]) -> list[int]:
    """The node ids along ``tokens`` from the root, through the kept nodes to the finished one."""
    path, parent = [], None
    for token in tokens:
        parent = children[parent, token]
        path.append(parent)
    return path


def _first_sentence(values) -> list:
    """A candidates entry of the first sentence as a list: a lone sentence's are lists, a batch's
    (sentences, 2K) tensors."""
    return values if isinstance(values, list) else values[0].tolist()
