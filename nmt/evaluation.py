"""Corpus scores with sacreBLEU (BLEU and chrF with their signatures, TER) and perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    ter: float | None = None
    ter_signature: str = ""

    def __str__(self) -> str:
        lines = f"BLEU = {self.bleu:.2f} ({self.bleu_signature})\nchrF = {self.chrf:.2f} ({self.chrf_signature})"
        return lines + (f"\nTER = {self.ter:.2f} ({self.ter_signature})" if self.ter is not None else "")


def corpus_scores(hypotheses: list[str], references: list[str], *more_references: list[str],
                  ter: bool = False) -> Scores:
    """Detokenized hypotheses against raw references (sacreBLEU's default 13a tokenization), with
    any number of further reference translations of the same sentences; TER too with ``ter``."""
    for refs in (references, *more_references):
        if len(hypotheses) != len(refs):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} references")
    ref_sets = [references, *more_references]
    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hypotheses, ref_sets), chrf.corpus_score(hypotheses, ref_sets)
    scores = Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()))
    if ter:
        metric = TER()
        scores.ter, scores.ter_signature = metric.corpus_score(hypotheses, ref_sets).score, str(metric.get_signature())
    return scores


def perplexity(total_log_prob: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood; inf (not an OverflowError) for a diverged model."""
    mean = -total_log_prob / max(1, n_tokens)
    return math.exp(mean) if mean < 709.0 else math.inf  # (exp overflows a float beyond ~709.78)
