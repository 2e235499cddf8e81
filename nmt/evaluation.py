"""Corpus scores with sacreBLEU (BLEU with its signature, chrF) and perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def __str__(self) -> str:
        return f"BLEU = {self.bleu:.2f} ({self.bleu_signature})\nchrF = {self.chrf:.2f} ({self.chrf_signature})"


def corpus_scores(hypotheses: list[str], references: list[str]) -> Scores:
    """Detokenized hypotheses against raw references (sacreBLEU's default 13a tokenization)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()))


def perplexity(total_log_prob: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood; inf (not an OverflowError) for a diverged model."""
    mean = -total_log_prob / max(1, n_tokens)
    return math.exp(mean) if mean < 709.0 else math.inf  # (exp overflows a float beyond ~709.78)
