"""The beam-search core: one explicit beam state, one step, one stopping rule, one top-k.

Search talks to a model through two calls (``Seq2Seq`` implements them; the tests use a
scripted toy model):

* ``encode(src, lengths) -> state``: a dict of batch-first tensors;
* ``step(prev_tokens, state) -> (log_probs (rows, vocab), attention (rows, src_len) or None, state)``;
* optionally ``sentence_keys``: the state entries that hold one row per sentence, shared by
  its hypotheses (the encoder memory); ``step`` then gets ``beam`` rows of the other entries
  for each row of these, consecutive.

Scores are length-normalized: ``sum log p / length ** alpha`` where the length counts the
end-of-sentence token. At every step each sentence's 2K best candidates (``beam_topk``) are
split into finished hypotheses (those ending in </s> among the K best) and the K best open
ones; a sentence stops (``sentences_done``) once its n-best-th finished hypothesis cannot be
beaten by any open one under that normalization.

The drivers around the core: ``nmt.search.batched`` (eager, drops sentences that stopped),
``nmt.search.single`` (one sentence on a CPU, its bookkeeping on Python numbers) and
``nmt.engines.cuda_graphs`` (fixed shapes, each step replayed as a CUDA graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.search.topk import NEG_INF, beam_topk
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # without </s>
    score: float  # length-normalized log-probability
    attention: torch.Tensor | None  # (len(tokens), src_len) over the real source positions


@dataclass
class Beams:
    """The state of a beam search over ``batch`` sentences; rows are hypotheses, K consecutive
    per sentence (batch * K).

    The finished hypotheses (``fin_*``) are the n best so far of each sentence: normalized
    score, length (the step of their </s>) and the row of the previous step that </s> extended."""

    K: int
    n_best: int
    shared: tuple[str, ...]  # the model state's per-sentence entries
    state: dict  # the model's decoding state, batch * K rows (batch for ``shared``)
    prev: torch.Tensor  # (batch * K,) each open hypothesis' last token
    alive: torch.Tensor  # (batch, K) the open hypotheses' scores, best first
    fin_score: torch.Tensor  # (batch, n_best)
    fin_len: torch.Tensor  # (batch, n_best)
    fin_beam: torch.Tensor  # (batch, n_best)
    limit: torch.Tensor  # (batch,) the most tokens before </s>
    best_case: torch.Tensor  # (batch,) divisor of the open hypotheses' best normalized score
    shortest: int  # min(limit), on the host: before that step no sentence is forced to end

    forced: torch.Tensor | None = None  # (batch, P) tokens each sentence must begin with, PAD_ID past its prefix

    @classmethod
    def start(cls, model, state: dict, lengths: torch.Tensor, K: int, n_best: int, length_penalty: float,
              max_len_a: float, max_len_b: int, forced: torch.Tensor | None = None) -> "Beams":
        """The search's first state, from the encoder's ``state`` of (batch) sentences; ``forced``:
        see ``forced_tokens``."""
        if not 1 <= n_best <= K:
            raise ValueError("n_best must be between 1 and the beam size")
        batch, device = lengths.size(0), lengths.device
        shared = tuple(getattr(model, "sentence_keys", ()))
        limit = max_lengths(lengths, max_len_a, max_len_b, forced)
        alive = torch.full((batch, K), NEG_INF, device=device)
        alive[:, 0] = 0.0
        return cls(K, n_best, shared, select_rows(state, torch.arange(batch, device=device).repeat_interleave(K), shared),
                   torch.full((batch * K,), BOS_ID, dtype=torch.long, device=device), alive,
                   torch.full((batch, n_best), NEG_INF, device=device),
                   torch.zeros((batch, n_best), dtype=torch.long, device=device),
                   torch.zeros((batch, n_best), dtype=torch.long, device=device),
                   limit, best_case(limit, length_penalty), int(limit.min()), forced)


@dataclass
class Step:
    """What one step of ``beam_step`` made: the next open hypotheses and finished ones, and the
    candidates it chose from (each sentence's 2K best: scores, rows they extend, tokens)."""

    prev: torch.Tensor  # (batch * K,) tokens of the open hypotheses
    rows: torch.Tensor  # (batch * K,) the row of the previous step each extends
    state: dict
    alive: torch.Tensor  # (batch, K)
    fin_score: torch.Tensor
    fin_len: torch.Tensor
    fin_beam: torch.Tensor
    attn: torch.Tensor | None  # (batch * K, src_len) the previous rows' attention
    candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (batch, 2K) each


def beam_step(model, beams: Beams, t: int | torch.Tensor, divisor: float | torch.Tensor, eager: bool) -> Step:
    """One step of beam search for every sentence of ``beams`` (which it does not change).

    ``t``: the step (an int, or a one-element tensor for a graph); ``divisor``: (t + 1) ** alpha.
    ``eager``: host decisions are allowed, to skip work that changes nothing on a CPU (forcing
    </s> before any sentence's limit, finishing when no candidate ends); a graph takes all paths."""
    K, rows = beams.K, beams.alive.size(0)
    logp, attn, state = model.step(beams.prev, beams.state)  # (rows*K, V), (rows*K, src_len) or None
    if beams.forced is not None and t < beams.forced.size(1):  # (an int t: prefixes are searched eagerly)
        logp = force_tokens(logp, beams.forced[:, t].repeat_interleave(K))
    if not eager or t >= beams.shortest:  # past its limit a sentence may only end
        logp = force_eos(logp, (t >= beams.limit).repeat_interleave(K))
    top, parent, token = beam_topk(logp, beams.alive.view(-1), K, 2 * K)  # (rows, 2K) best first
    is_eos = token == EOS_ID
    fin_score, fin_len, fin_beam = beams.fin_score, beams.fin_len, beams.fin_beam
    ending = is_eos[:, :K]  # candidates ending in </s> among the K best become finished hypotheses
    if not eager or logp.device.type != "cpu" or bool(ending.any()):
        new_fin = torch.where(ending, top[:, :K] / divisor, NEG_INF)
        fin_score, pick = torch.cat([fin_score, new_fin], dim=1).topk(beams.n_best, dim=-1)  # of n_best + K
        steps = t.expand(rows, K) if isinstance(t, torch.Tensor) else torch.full((rows, K), t, device=top.device)
        fin_len = torch.cat([fin_len, steps], 1).gather(1, pick)
        fin_beam = torch.cat([fin_beam, parent[:, :K]], 1).gather(1, pick)
    alive, keep = torch.where(is_eos, NEG_INF, top).topk(K, dim=-1)  # the K best that do not end go on
    back = parent.gather(1, keep).view(-1)  # (rows*K,)
    prev = token.gather(1, keep).view(-1)
    return Step(prev, back, select_rows(state, back, beams.shared), alive, fin_score, fin_len, fin_beam, attn,
                (top, parent, token))


def sentences_done(fin_worst, alive_best, best_case, steps, limit, max_steps, top_ended=False):
    """The stopping rule, per sentence, after ``steps`` steps: its n-best-th finished hypothesis
    (``fin_worst``) beats the best open one's best case (its score / ``best_case``; -inf when no
    hypothesis is open), or it has reached its length ``limit``, or the search its ``max_steps``.
    With simple stopping (seq2seq-attn's ``-simple 1``), also as soon as the best candidate of
    the step ended in </s> (``top_ended``): its n-best finished so far are the result, which
    differs from exact stopping only where an open hypothesis could still win (a length penalty) or
    fewer than n-best have finished.

    Float32 throughout: tensors (batch,) in the batched and graphed drivers, NumPy float32 scalars
    for one sentence (the same IEEE arithmetic, without a tensor operation's overhead)."""
    return (fin_worst >= alive_best / best_case) | (steps > limit) | (steps == max_steps) | top_ended


def best_case(limit: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """The divisor of an open hypothesis' best possible normalized score: under a length penalty,
    reaching the length limit; without one, its score can only fall (x ** 0 = 1)."""
    if length_penalty > 0:
        return (limit + 1).float() ** length_penalty
    return torch.ones(limit.shape, device=limit.device)


def max_lengths(lengths: torch.Tensor, a: float, b: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sentence output length limit (tokens before </s>), at least 1 and at least its forced prefix."""
    limit = (lengths.float() * a + b).floor().long().clamp(min=1)
    return limit if forced is None else torch.maximum(limit, (forced != PAD_ID).sum(1))


def forced_tokens(prefixes: list[list[int]] | None, device) -> torch.Tensor | None:
    """The prefixes (token ids; [] for none) as a (batch, longest) tensor padded with PAD_ID, or None
    when no sentence has one. Search continues each sentence from its prefix: at step t < len(prefix)
    its hypotheses may only take the prefix's token t, with the model's log-probability for it."""
    if not prefixes or not any(prefixes):
        return None
    width = max(len(p) for p in prefixes)
    return torch.tensor([p + [PAD_ID] * (width - len(p)) for p in prefixes], dtype=torch.long, device=device)


def normalize(score: torch.Tensor, length, alpha: float) -> torch.Tensor:
    return score / (length ** alpha) if alpha else score


def select_rows(state: dict, rows: torch.Tensor, shared=(), sentences: torch.Tensor | None = None) -> dict:
    """Every hypothesis entry's ``rows``; the ``shared`` (per-sentence) entries stay as they
    are, or take their ``sentences`` rows when sentences are dropped."""
    out = {}
    for key, value in state.items():
        if key not in shared:
            out[key] = value.index_select(0, rows)
        else:
            out[key] = value if sentences is None else value.index_select(0, sentences)
    return out


def force_tokens(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logp (n, vocab) with only ``tokens[r]`` possible in row r, where it is not PAD_ID (no prefix left)."""
    others = torch.arange(logp.size(1), device=logp.device).unsqueeze(0) != tokens.unsqueeze(1)
    return logp.masked_fill(others & (tokens != PAD_ID).unsqueeze(1), NEG_INF)


def force_eos(logp: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """logp (n, vocab) with every token but </s> impossible in the rows where ``rows`` (n,) is True."""
    others = torch.arange(logp.size(1), device=logp.device) != EOS_ID
    return logp.masked_fill(rows.unsqueeze(1) & others, NEG_INF)
