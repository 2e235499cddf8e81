"""Greedy and beam search over any model with ``encode`` and ``step``.

``core`` holds the beam state, its step, the stopping rule; ``topk`` the choice of the best
candidates; ``history`` the record a search's hypotheses are rebuilt from; ``batched`` and
``single`` the eager drivers (``nmt.engines.cuda_graphs`` is the one for a GPU).
"""

from nmt.search.batched import beam_search, greedy_search
from nmt.search.core import Hypothesis

__all__ = ["Hypothesis", "beam_search", "greedy_search"]
