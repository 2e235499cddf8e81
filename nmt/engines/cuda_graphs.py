"""Beam search on a GPU with each step replayed as a CUDA graph.

Engine: on a GPU a beam step of a few sentences is about 85 small kernels, and the GPU waits on
Python and on kernel launches far longer than it computes. Here a whole step (the
decoder step, the choice of the best candidates, the finished hypotheses, the stopping test
and the history) is captured once per shape as a CUDA graph and replayed: one launch a step.

A graph has fixed shapes, so no sentence leaves the batch, as it does in ``beam_search``: a
sentence that stops has its results recorded at that step and is then computed on, unused,
until every sentence has stopped. The host only looks every few steps whether all have. The
step is the search core's (``nmt.search.core``), so the hypotheses and scores are those of
``beam_search`` with ``check_every=1``: on a CPU the same step runs eagerly
(``fixed_beam_search``), and the tests compare both with ``beam_search``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from nmt.search.core import Beams, Hypothesis, beam_step, max_lengths, sentences_done
from nmt.search.history import History
from nmt.vocabulary import EOS_ID


class _Beams:
    """A beam search over a fixed number of sentences and source positions, in tensors that keep
    their storage from step to step (a graph reads and writes them), and ``step``: the core's
    ``beam_step`` and stopping rule, written back in place without synchronising with the host."""

    def __init__(self, model, state: dict, lengths: torch.Tensor, src_len: int, beam_size: int,
                 n_best: int, length_penalty: float, max_len_a: float, max_len_b: int, simple: bool = False):
        batch, device = lengths.size(0), lengths.device
        self.model, self.max_len_a, self.max_len_b, self.length_penalty = model, max_len_a, max_len_b, length_penalty
        self.simple = simple  # stop a sentence when its best candidate ends (``sentences_done``)
        self.beams = Beams.start(model, state, lengths, beam_size, n_best, length_penalty, max_len_a, max_len_b)
        self.beams.state = {k: v.clone() for k, v in self.beams.state.items()}
        capacity = int(max_lengths(torch.tensor([src_len]), max_len_a, max_len_b)) + 1  # the most steps
        # (t + 1) ** alpha of a hypothesis ending at step t: the Python float, as the eager drivers divide by
        self.divisors = torch.tensor([(t + 1) ** length_penalty for t in range(capacity)], device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the step
        self.last = torch.zeros(1, dtype=torch.long, device=device)  # steps of this search
        self.stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        # The finished hypotheses at the step each sentence stopped: score, length, beam.
        self.res = tuple(x.clone() for x in (self.beams.fin_score, self.beams.fin_len, self.beams.fin_beam))
        self.tokens = torch.zeros(capacity, batch * beam_size, dtype=torch.long, device=device)  # History, by step
        self.back = torch.zeros(capacity, batch * beam_size, dtype=torch.long, device=device)
        self.attn: torch.Tensor | None = None  # (capacity, batch * K, src_len), made at the first step
        self.steps = 0
        self.load(state, lengths)

    def load(self, state: dict, lengths: torch.Tensor) -> None:
        """Start a search of these sentences (the encoder's ``state``, of the same shapes)."""
        start = Beams.start(self.model, state, lengths, self.beams.K, self.beams.n_best, self.length_penalty,
                            self.max_len_a, self.max_len_b)
        for key, value in start.state.items():
            self.beams.state[key].copy_(value)
        for name in ("prev", "alive", "fin_score", "fin_len", "fin_beam", "limit", "best_case"):
            getattr(self.beams, name).copy_(getattr(start, name))
        self.steps = int(start.limit.max()) + 1
        self.lengths = lengths
        self.last.fill_(self.steps)
        self.t.zero_()
        self.stopped.zero_()
        for res, fin in zip(self.res, (start.fin_score, start.fin_len, start.fin_beam)):
            res.copy_(fin)

    def step(self) -> None:
        """One step of the core for every sentence, in place, with its stopping rule."""
        beams, t = self.beams, self.t
        s = beam_step(self.model, beams, t, self.divisors[t], eager=False)
        for key, value in beams.state.items():
            if key not in beams.shared:
                value.copy_(s.state[key])
        self._record(t, s.prev, s.rows, s.attn)
        top_ended = self.simple and s.candidates[2][:, 0] == EOS_ID
        done = sentences_done(s.fin_score[:, -1], s.alive[:, 0], beams.best_case, t + 1, beams.limit, self.last,
                              top_ended)
        newly = (done & ~self.stopped).unsqueeze(1)
        for res, value in zip(self.res, (s.fin_score, s.fin_len, s.fin_beam)):
            res.copy_(torch.where(newly, value, res))
        self.stopped |= done
        for name in ("fin_score", "fin_len", "fin_beam", "alive", "prev"):
            getattr(beams, name).copy_(getattr(s, name))
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
        return history.hypotheses(*self.res, self.lengths)


@torch.inference_mode()
def fixed_beam_search(model, src, lengths, beam_size: int = 5, n_best: int = 1, length_penalty: float = 0.0,
                      max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 1,
                      simple: bool = False) -> list[list[Hypothesis]]:
    """The search that ``GraphedBeamSearch`` replays, run eagerly (any device): the results
    of ``beam_search``."""
    _check(beam_size, n_best)
    beams = _Beams(model, model.encode(src, lengths), lengths, src.size(1), beam_size, n_best,
                   length_penalty, max_len_a, max_len_b, simple)
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
                 max_len_a: float = 2.0, max_len_b: int = 10, check_every: int = 4,
                 simple: bool = False) -> list[list[Hypothesis]]:
        _check(beam_size, n_best)
        if src.device.type != "cuda":
            raise ValueError("CUDA graphs need the source on a CUDA device")
        key = (tuple(src.shape), beam_size, n_best, length_penalty, max_len_a, max_len_b, simple)
        with self._lock:
            state = self.model.encode(src, lengths)
            if key in self._graphs:
                self._graphs.move_to_end(key)
                beams, graph = self._graphs[key]
                beams.load(state, lengths)
            else:
                beams = _Beams(self.model, state, lengths, src.size(1), beam_size, n_best,
                               length_penalty, max_len_a, max_len_b, simple)
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
