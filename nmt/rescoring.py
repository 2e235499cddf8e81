"""n-best rescoring against a reference: the oracle of an n-best list (seq2seq-attn's ``rescore``).

For every sentence, the hypothesis of its n-best list with the best sentence-level score against
the reference is chosen. Its corpus score, next to that of the n-best lists' tops, says how much
better translations search found but did not rank first: a bound on what reranking could buy.

* BLEU: sacreBLEU's sentence BLEU with n-grams up to ``order`` (effective order, so short
  sentences without 4-gram matches still get a score).
* GLEU (Wu et al. 2016, section 7): the minimum of the n-gram precision and recall, n-grams of
  1 to ``order`` tokens pooled, on sacreBLEU's 13a tokenization.
"""

from __future__ import annotations

from collections import Counter

from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

METRICS = ("bleu", "gleu")
_tokenize = Tokenizer13a()


def ngrams(tokens: list[str], order: int) -> Counter:
    """Every n-gram of 1 to ``order`` tokens, counted."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, order + 1) for i in range(len(tokens) - n + 1))


def sentence_gleu(hypothesis: str, reference: str, order: int = 4) -> float:
    """GLEU in [0, 100]: min(matching n-grams / hypothesis n-grams, matching / reference n-grams)."""
    hyp, ref = ngrams(_tokenize(hypothesis).split(), order), ngrams(_tokenize(reference).split(), order)
    matches = sum((hyp & ref).values())
    total = max(sum(hyp.values()), sum(ref.values()))
    return 100.0 * matches / total if total else 0.0


def sentence_scorer(metric: str, order: int = 4):
    """``score(hypothesis, reference) -> float`` for ``metric`` (bleu or gleu) up to ``order``-grams."""
    if metric not in METRICS:
        raise ValueError(f"--rescore must be one of {', '.join(METRICS)} (got {metric!r})")
    if not 1 <= order <= 10:
        raise ValueError(f"--rescore-param (the n-gram order) must be between 1 and 10 (got {order})")
    if metric == "gleu":
        return lambda hyp, ref: sentence_gleu(hyp, ref, order)
    bleu = BLEU(max_ngram_order=order, effective_order=True)
    return lambda hyp, ref: bleu.sentence_score(hyp, [ref]).score


def oracle(n_best: list[list[str]], references: list[str], metric: str = "bleu", order: int = 4) -> list[int]:
    """Per sentence, the rank (0: the top) of its n-best hypothesis scoring best against its
    reference; the higher-ranked one on a tie (and 0 for an empty list)."""
    if len(n_best) != len(references):
        raise ValueError(f"{len(n_best)} n-best lists but {len(references)} references")
    score = sentence_scorer(metric, order)
    picks = []
    for hyps, ref in zip(n_best, references):
        scores = [score(h, ref) for h in hyps]
        picks.append(max(range(len(scores)), key=lambda i: (scores[i], -i)) if scores else 0)
    return picks
