"""Beam search on a GPU with each step replayed as a CUDA graph.

On a GPU a beam step of a few sentences is about 85 small kernels, and the GPU waits on Python
and on kernel launches far longer than it computes (see BENCHMARKS.md). Here a whole step (the
decoder step, the choice of the best candidates, the finished hypotheses, the stopping test
and the history) is captured once per shape as a CUDA graph and replayed: one launch a step.

A graph has fixed shapes, so no sentence leaves the batch, as it does in ``beam_search``: a
sentence that stops has its results recorded at that step and is then computed on, unused,
until every sentence has stopped. The host only looks every few steps whether all have. The
hypotheses and scores are those of ``beam_search`` with ``check_every=1``: on a CPU the same
step runs eagerly (``fixed_beam_search``), and the tests compare both with ``beam_search``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from nmt.search.beam import (
    NEG_INF,
    History,
    Hypothesis,
    beam_topk,
    force_eos,
    max_lengths,
    results_from_history,
    select_rows,
)
from nmt.vocabulary import BOS_ID, EOS_ID


class _Beams:
    """The state of a beam search over a fixed number of sentences and source positions, in
    tensors that keep their storage from step to step (a graph reads and writes them), and
    ``step``, which updates them in place without synchronising with the host.

    Rows are hypotheses, K consecutive per sentence (batch * K), as in ``beam_search``."""

    def __init__(self, model, state: dict, lengths: torch.Tensor, src_len: int, beam_size: int,
                 n_best: int, length_penalty: float, max_len_a: float, max_len_b: int):
        batch, device, K = lengths.size(0), lengths.device, beam_size
        self.model, self.K, self.n_best, self.max_len_a, self.max_len_b = model, K, n_best, max_len_a, max_len_b
        self.length_penalty = length_penalty
        self.shared = getattr(model, "sentence_keys", ())
        self.expand = torch.arange(batch, device=device).repeat_interleave(K)  # each sentence's row, K times
        self.state = {k: v.clone() for k, v in select_rows(state, self.expand, self.shared).items()}
        capacity = int(max_lengths(torch.tensor([src_len]), max_len_a, max_len_b)) + 1  # the most steps
        # The length normalisation of a hypothesis ending at step t, (t + 1) ** alpha (as in
        # ``normalize``: the Python float rounded to float32, divided by in float32).
        self.divisors = torch.tensor([(t + 1) ** length_penalty for t in range(capacity)], device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the step
        self.last = torch.zeros(1, dtype=torch.long, device=device)  # steps of this search
        self.limit = torch.zeros(batch, dtype=torch.long, device=device)
        self.best_len = torch.ones(batch, device=device)  # the open hypotheses' best-case divisor
        self.prev = torch.full((batch * K,), BOS_ID, dtype=torch.long, device=device)
        self.alive = torch.full((batch, K), NEG_INF, device=device)  # open hypotheses' scores
        self.stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        # The n-best finished hypotheses so far (fin) and at the step the sentence stopped (res):
        # score, length (the step of their </s>) and the beam that </s> extended.
        self.fin = _finished(batch, n_best, device)
        self.res = _finished(batch, n_best, device)
        self.tokens = torch.zeros(capacity, batch * K, dtype=torch.long, device=device)  # History, by step
        self.back = torch.zeros(capacity, batch * K, dtype=torch.long, device=device)
        self.attn: torch.Tensor | None = None  # (capacity, batch * K, src_len), made at the first step
        self.steps = 0
        self.load(state, lengths)

    def load(self, state: dict, lengths: torch.Tensor) -> None:
        """Start a search of these sentences (the encoder's ``state``, of the same shapes)."""
        for key, value in select_rows(state, self.expand, self.shared).items():
            self.state[key].copy_(value)
        limit = max_lengths(lengths, self.max_len_a, self.max_len_b)
        self.steps = int(limit.max()) + 1
        self.lengths = lengths
        self.limit.copy_(limit)
        self.last.fill_(self.steps)
        if self.length_penalty > 0:  # (as in beam_search's stopping test)
            self.best_len.copy_((limit + 1).float() ** self.length_penalty)
        self.t.zero_()
        self.prev.fill_(BOS_ID)
        self.alive.fill_(NEG_INF)
        self.alive[:, 0] = 0.0
        self.stopped.zero_()
        for fin, res in zip(self.fin, self.res):
            fin.fill_(NEG_INF if fin.is_floating_point() else 0)
            res.copy_(fin)

    def step(self) -> None:
        """One step of ``beam_search`` for every sentence, in place, with its stopping test."""
        K, t = self.K, self.t
        batch = self.limit.size(0)
        logp, attn, state = self.model.step(self.prev, self.state)  # (batch*K, V), (batch*K, src_len) or None
        logp = force_eos(logp, (t >= self.limit).repeat_interleave(K))
        top, parent, token = beam_topk(logp, self.alive.view(-1), K, 2 * K)  # (batch, 2K) each
        is_eos = token == EOS_ID
        fin_score, fin_len, fin_beam = self.fin
        new_fin = torch.where(is_eos[:, :K], top[:, :K] / self.divisors[t], NEG_INF)
        fin_score, pick = torch.cat([fin_score, new_fin], 1).topk(self.n_best, dim=-1)
        fin_len = torch.cat([fin_len, t.expand(batch, K)], 1).gather(1, pick)
        fin_beam = torch.cat([fin_beam, parent[:, :K]], 1).gather(1, pick)
        alive, keep = torch.where(is_eos, NEG_INF, top).topk(K, dim=-1)
        rows = parent.gather(1, keep).view(-1)  # (batch*K,) the row each open hypothesis extends
        prev = token.gather(1, keep).view(-1)
        for key, value in self.state.items():
            if key not in self.shared:
                value.copy_(state[key].index_select(0, rows))
        self._record(t, prev, rows, attn)

        best = alive[:, 0]
        bound = torch.where(best > NEG_INF, best / self.best_len, NEG_INF)
        done = (fin_score[:, -1] >= bound) | (t + 1 > self.limit) | (t + 1 == self.last)  # (batch,)
        newly = (done & ~self.stopped).unsqueeze(1)
        for res, value in zip(self.res, (fin_score, fin_len, fin_beam)):
            res.copy_(torch.where(newly, value, res))
        self.stopped |= done
        for fin, value in zip(self.fin, (fin_score, fin_len, fin_beam)):
            fin.copy_(value)
        self.alive.copy_(alive)
        self.prev.copy_(prev)
        self.t += 1

    def _record(self, t, tokens, back, attn) -> None:
        """The step's entries of the history: see ``History``."""
        self.tokens.index_copy_(0, t, tokens.unsqueeze(0))
        self.back.index_copy_(0, t, back.unsqueeze(0))
        if attn is not None:
            if self.attn is None:  # (the first step is never a graph's: see GraphedBeamSearch)
                self.attn = attn.new_zeros(self.tokens.size(0), *attn.shape)
            self.attn.index_copy_(0, t, attn.unsqueeze(0))

    def run(self, step, check_every: int) -> list[list[Hypothesis]]:
        """Call ``step`` (``self.step`` or a graph of it) until every sentence has stopped,
        looking every ``check_every`` steps (each look waits for the device)."""
        t = 0
        for t in range(self.steps):
            step()
            if ((t + 1) % check_every == 0 or t + 1 == self.steps) and bool(self.stopped.all()):
                break
        history = History()
        history.tokens, history.back = list(self.tokens[: t + 1]), list(self.back[: t + 1])
        history.attn = list(self.attn[: t + 1]) if self.attn is not None else [None] * (t + 1)
        return results_from_history(history, *self.res, self.lengths)


def _finished(batch: int, n_best: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    score = torch.full((batch, n_best), NEG_INF, device=device)
    return score, torch.zeros((batch, n_best), dtype=torch.long, device=device), torch.zeros_like(score, dtype=torch.long)


@torch.inference_mode()
def fixed_beam_search(model, src, lengths, beam_size: int = 5, n_best: int = 1, length_penalty: float = 0.0,
                      max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 1) -> list[list[Hypothesis]]:
    """The search that ``GraphedBeamSearch`` replays, run eagerly (any device): the results
    of ``beam_search``."""
    _check(beam_size, n_best)
    beams = _Beams(model, model.encode(src, lengths), lengths, src.size(1), beam_size, n_best,
                   length_penalty, max_len_a, max_len_b)
    return beams.run(beams.step, check_every)


def _check(beam_size: int, n_best: int) -> None:
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and the beam size")


class GraphedBeamSearch:
    """``beam_search`` for one model (in eval mode) on a GPU, each step a CUDA graph replay.

    A graph is captured for every new shape (sentences, source length) and setting, the first
    time it is searched (a few milliseconds), and kept for the next searches of that shape;
    ``cache_size`` bounds how many are kept (the least recently used go first). The graphs
    share one memory pool for their temporaries: a step's temporaries are dead once its replay
    ends, and replays never overlap (one search at a time, each ends by reading its results), so
    a graph may reuse another's memory, and the cache needs the memory of its largest graph
    rather than of all together. The model's weights are read where they lie: change them in
    place only. Thread-safe."""

    def __init__(self, model, cache_size: int = 32):
        if getattr(model, "training", False):
            raise ValueError("capture a model in eval mode (a graph would freeze its dropout masks)")
        self.model, self.cache_size = model, cache_size
        self._graphs: OrderedDict[tuple, tuple[_Beams, torch.cuda.CUDAGraph]] = OrderedDict()
        self._lock = threading.Lock()
        self.captures = 0  # graphs captured so far
        self._pool = None  # the graphs' shared memory pool, made at the first capture

    @torch.inference_mode()
    def __call__(self, src, lengths, beam_size: int = 5, n_best: int = 1, length_penalty: float = 0.0,
                 max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 4) -> list[list[Hypothesis]]:
        _check(beam_size, n_best)
        if src.device.type != "cuda":
            raise ValueError("CUDA graphs need the source on a CUDA device")
        key = (tuple(src.shape), beam_size, n_best, length_penalty, max_len_a, max_len_b)
        with self._lock:
            state = self.model.encode(src, lengths)
            if key in self._graphs:
                self._graphs.move_to_end(key)
                beams, graph = self._graphs[key]
                beams.load(state, lengths)
            else:
                beams = _Beams(self.model, state, lengths, src.size(1), beam_size, n_best,
                               length_penalty, max_len_a, max_len_b)
                graph = self._capture(beams, state, lengths)
                self._graphs[key] = beams, graph
                if len(self._graphs) > self.cache_size:
                    self._graphs.popitem(last=False)
            return beams.run(graph.replay, check_every)

    def _capture(self, beams: _Beams, state: dict, lengths: torch.Tensor) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (libraries set up there, outside the graph), start the
        search again and capture one step; capturing runs nothing."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                beams.step()
        torch.cuda.current_stream().wait_stream(side)
        beams.load(state, lengths)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._memory_pool()):
            beams.step()
        self.captures += 1
        return graph

    def _memory_pool(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool
