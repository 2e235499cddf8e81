"""The best candidates of a beam step, by blocks: each sentence's k best ``offset[r] + logp[r, v]``
over its beams r and tokens v lie in the k blocks (of TOPK_BLOCK tokens) whose maxima plus
offsets are largest, so a first pass takes the blocks' maxima and a second the top k of those
blocks' values. The same values as one plain ``topk`` over (beam x vocabulary).

Two memory strategies of that one algorithm: ``beam_topk`` (any batch, any device) adds the
offsets to the blocks' maxima and never writes a (rows, vocab) temporary; ``best_candidates``
(one sentence on a CPU) writes the sums once into a reused buffer and hands back Python lists,
in fewer, larger operations: the fast path for one sentence, where each small operation's
overhead counts more than the arithmetic.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
TOPK_BLOCK = 32  # tokens per block (0: one plain topk)


def beam_topk(logp: torch.Tensor, offsets: torch.Tensor, beam: int, k: int,
              block: int | None = None) -> tuple[torch.Tensor, ...]:
    """The k best candidates ``offsets[r] + logp[r, v]`` of every sentence, over its ``beam``
    consecutive rows r of ``logp`` (rows, vocab) and all tokens v; ``offsets`` (rows,) are the
    beams' scores. Returns scores, rows and tokens, each (rows // beam, k), best first.

    Two passes over ``logp`` and no (rows, vocab) temporary: the k best lie in the k blocks
    (of TOPK_BLOCK columns) whose maxima plus offsets are largest, so take the blocks' maxima,
    then the top k of those blocks' values. On a CPU this reads the wide array once, where
    adding the offsets and one ``topk`` over (beam x vocabulary) read and write it several
    times and a ``topk`` over one wide row is slow. The same values as that plain ``topk`` and,
    barring ties, the same candidates (where a sentence has fewer than k candidates above
    -inf, those of its -inf scores are arbitrary valid ones)."""
    n, vocab = logp.shape
    sentences, block = n // beam, TOPK_BLOCK if block is None else block
    first_row = torch.arange(sentences, device=logp.device).unsqueeze(1) * beam  # (sentences, 1)
    if not block or vocab < 4 * k * block:
        cand = (offsets.unsqueeze(1) + logp).view(sentences, beam * vocab)
        top, idx = cand.topk(k, dim=-1)
        return top, first_row + idx // vocab, idx % vocab
    whole = vocab - vocab % block
    maxima = logp[:, :whole].unflatten(1, (whole // block, block)).amax(-1)  # (rows, blocks)
    if whole < vocab:
        maxima = torch.cat([maxima, logp[:, whole:].amax(-1, keepdim=True)], 1)  # the short last block
    n_blocks = maxima.size(1)
    _, best = (maxima + offsets.unsqueeze(1)).view(sentences, beam * n_blocks).topk(k, dim=-1)
    rows = first_row + best // n_blocks  # (sentences, k) the row of each best block
    cols = ((best % n_blocks).unsqueeze(-1) * block + torch.arange(block, device=logp.device)).view(sentences, -1)
    rows = rows.repeat_interleave(block, dim=1)  # (sentences, k * block), like cols
    values = logp.view(-1)[rows * vocab + cols.clamp(max=vocab - 1)] + offsets[rows]
    if whole < vocab:
        values = values.masked_fill(cols >= vocab, NEG_INF)
    top, pos = values.topk(k, dim=-1)
    return top, rows.gather(1, pos), cols.gather(1, pos).clamp(max=vocab - 1)


def candidate_sums(n: int) -> torch.Tensor:
    """A buffer for ``best_candidates``: n sums, then -inf up to a whole number of blocks."""
    return torch.full((n + (-n % TOPK_BLOCK if TOPK_BLOCK else 0),), NEG_INF)


def best_candidates(logp: torch.Tensor, offsets: torch.Tensor, k: int, sums: torch.Tensor) -> tuple[list, list, list]:
    """``beam_topk`` for one sentence, as Python lists: the k best ``offsets[r] + logp[r, v]``
    over its beams r and tokens v, best first: scores, beams, tokens. ``sums``: ``candidate_sums``
    of ``logp.numel()``, whose padding stays -inf."""
    vocab, n, block = logp.size(1), logp.numel(), TOPK_BLOCK
    torch.add(logp, offsets.unsqueeze(1), out=sums[:n].view_as(logp))
    if not block or n < 4 * k * block:
        top, index = sums[:n].topk(k)
        index_l = index.tolist()
    else:
        blocks = sums.view(-1, block)  # (n_blocks, block)
        best = blocks.amax(1).topk(k).indices  # (k,)
        top, pos = blocks[best].view(-1).topk(k)
        best_l = best.tolist()
        # (a padding position can only come with -inf, when fewer than k are possible: any valid one will do)
        index_l = [min(best_l[p // block] * block + p % block, n - 1) for p in pos.tolist()]
    return top.tolist(), [i // vocab for i in index_l], [i % vocab for i in index_l]
