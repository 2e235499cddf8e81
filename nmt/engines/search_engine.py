"""The one place that picks how search runs: ``Engines(model, device).get(EngineConfig)``.

A ``SearchEngine`` is resolved once per setting, from the device and an ``EngineConfig``:

| engine       | device | setting                     | model searched                        |
|--------------|--------|-----------------------------|---------------------------------------|
| plain        | any    | (always available)          | the model                             |
| int8         | CPU    | ``int8`` (unset: see below) | a copy with int8 matrix layers        |
| tracing      | CPU    | ``trace`` (the default)     | its decoder step as a TorchScript trace |
| CUDA graphs  | CUDA   | ``cuda_graphs`` (default)   | each beam step replayed as a graph    |

An ensemble (``nmt.search.ensemble``) runs every engine too: its members' int8 copies and
traces are made by each member's own ``Engines``, and a CUDA graph captures the whole ensemble step.

Settings left unset are decided here, in one place, for the API, the CLI and the app alike
(``Engines.resolve``): int8 on a CPU where the checkpoint records that it keeps its validation BLEU
(``nmt.engines.int8.int8_keeps_quality``), else exact fp32; ``inter_threads`` 0: as many batches at
once as the CPU has threads, at most 4 (on a GPU, one).

Engines give the plain path's results (int8 up to its rounding). What search finds is set by a
``DecodeConfig`` (beam, n-best, lengths), never by the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from nmt.config import DecodeConfig, EngineConfig
from nmt.data import pad
from nmt.engines.cuda_graphs import GraphedBeamSearch
from nmt.engines.int8 import quantize_int8
from nmt.engines.tracing import TracedSearchModel, take_trace_slot
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.search.core import forced_tokens
from nmt.search.ensemble import Ensemble

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchEngine:
    """Searches batches of source ids with one model on one device."""

    model: object  # the search interface: encode, step, sentence_keys
    device: torch.device
    graphs: GraphedBeamSearch | None  # CUDA graphs, or None for the eager drivers
    inter_threads: int = 1

    def search(self, src: torch.Tensor, lengths: torch.Tensor, cfg: DecodeConfig,
               forced: torch.Tensor | None = None) -> list[list[Hypothesis]]:
        """One padded batch (batch, src_len) on the engine's device; ``forced``: (batch, P) prefixes
        (``nmt.search.core.forced_tokens``), searched by the eager drivers (a graph's steps are fixed)."""
        check_every = 1 if self.device.type == "cpu" else 4  # on a GPU each check is a host-device sync
        if self.graphs is not None and forced is None:  # (greedy is beam search with beam 1 there)
            return self.graphs(src, lengths, cfg.beam_size, cfg.n_best, cfg.length_penalty, cfg.max_len_a,
                               cfg.max_len_b, check_every=check_every, simple=cfg.simple)
        if cfg.beam_size == 1:  # (greedy stops at its first </s>: simple stopping either way)
            return greedy_search(self.model, src, lengths, cfg.max_len_a, cfg.max_len_b, cfg.length_penalty,
                                 check_every, forced)
        return beam_search(self.model, src, lengths, cfg.beam_size, cfg.n_best, cfg.length_penalty,
                           cfg.max_len_a, cfg.max_len_b, check_every=check_every, forced=forced, simple=cfg.simple)

    def search_ids(self, sentences: list[list[int]], cfg: DecodeConfig,
                   prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Every sentence (source ids; empty ones get no hypothesis), in batches of similar length;
        order is kept. ``prefixes``: target ids each sentence's translation must begin with ([] for
        none). With ``inter_threads`` > 1 on a CPU, that many batches are searched at once,
        each by its share of the threads: one batch's Python bookkeeping then overlaps another's
        matrix products, where a single batch leaves the cores idle between small operations."""
        order = sorted((i for i, s in enumerate(sentences) if s), key=lambda i: len(sentences[i]))
        chunks = [order[start : start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]

        def search(chunk: list[int]) -> list[list[Hypothesis]]:
            ids = [sentences[i] for i in chunk]
            lengths = torch.tensor([len(x) for x in ids], device=self.device)
            forced = forced_tokens([prefixes[i] for i in chunk], self.device) if prefixes else None
            return self.search(pad(ids).to(self.device), lengths, cfg, forced)

        workers = min(self.inter_threads, len(chunks)) if self.device.type == "cpu" else 1
        if workers > 1:
            with intra_op_threads(max(1, torch.get_num_threads() // workers)), ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(search, chunks))
        else:
            found = [search(chunk) for chunk in chunks]
        results: list[list[Hypothesis]] = [[] for _ in sentences]
        for chunk, hyps in zip(chunks, found):
            for i, hyp in zip(chunk, hyps):
                results[i] = hyp
        return results


class Engines:
    """The search engines of one model (in eval mode) on one device, each made once: the int8
    copy, the traces and the CUDA graphs are shared by every setting that uses them. Thread-safe."""

    def __init__(self, model: Seq2Seq | Ensemble, device: torch.device, int8_default: bool = False):
        self.model, self.device = model, device
        self.int8_default = int8_default and device.type == "cpu"  # (the checkpoint's record: see resolve)
        self._models: dict[tuple[bool, bool], object] = {}  # (int8, traced) -> search model
        self._members = [Engines(m, device) for m in model.members] if isinstance(model, Ensemble) else []
        self.graphs: GraphedBeamSearch | None = None  # made at the first search with CUDA graphs
        self._lock = threading.Lock()

    def resolve(self, cfg: EngineConfig) -> EngineConfig:
        """``cfg`` with its unset settings decided: int8 where the model keeps its quality with it
        (``int8_default``), inter_threads from the CPU's threads. A setting given always wins."""
        cfg.validate()
        int8 = self.int8_default if cfg.int8 is None else cfg.int8
        threads = cfg.inter_threads or (min(4, torch.get_num_threads()) if self.device.type == "cpu" else 1)
        return dataclasses.replace(cfg, int8=int8, inter_threads=threads)

    def get(self, cfg: EngineConfig) -> SearchEngine:
        cfg = self.resolve(cfg)
        if self.device.type == "cuda" and cfg.cuda_graphs and not cfg.int8:
            return SearchEngine(self.model, self.device, self._graphed(), cfg.inter_threads)
        return SearchEngine(self.model_for(cfg.int8, cfg.trace), self.device, None, cfg.inter_threads)

    def model_for(self, int8: bool, trace: bool = False):
        """The model to search with: the fp32 one or its int8 copy (CPU only), and on a CPU with
        ``trace``, its step as a TorchScript trace (the same outputs)."""
        if int8 and self.device.type != "cpu":
            raise NMTError("int8 decoding runs on the CPU only")
        # Only on a CPU (a GPU waits on kernel launches; untested there), and only a Seq2Seq, whose
        # step has no Python branch on tensor values that a trace would freeze.
        if self._members:
            with self._lock:
                if (int8, trace) not in self._models:
                    self._models[int8, trace] = Ensemble([e.model_for(int8, trace) for e in self._members])
                return self._models[int8, trace]
        trace = trace and self.device.type == "cpu" and isinstance(self.model, Seq2Seq)
        with self._lock:
            if (int8, False) not in self._models:
                self._models[int8, False] = quantize_int8(self.model) if int8 else self.model
            if trace and (int8, True) not in self._models:
                self._models[int8, True] = self._traced(self._models[int8, False])
            return self._models[int8, trace]

    @staticmethod
    def _traced(plain):
        if take_trace_slot():
            return TracedSearchModel(plain)
        logger.warning("this process has made the most traces it may (NMT_MAX_TRACES; TorchScript never frees "
                       "one): searching with the eager step")  # (said at every load past the limit)
        return plain

    def _graphed(self) -> GraphedBeamSearch:
        with self._lock:
            if self.graphs is None:
                self.graphs = GraphedBeamSearch(self.model)
            return self.graphs


@contextlib.contextmanager
def intra_op_threads(n: int):
    """PyTorch's CPU thread count set to ``n`` for the duration (a process-wide setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
