"""Greedy and beam search over any model with ``encode`` and ``step`` (see ``nmt.search.beam``)."""

from nmt.search.beam import Hypothesis, beam_search, greedy_search

__all__ = ["Hypothesis", "beam_search", "greedy_search"]
