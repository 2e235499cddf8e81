"""The decoder step as a TorchScript trace, for search on a CPU.

A beam step for one sentence is a few dozen small PyTorch calls, and on a CPU most of their
time is Python's and the dispatcher's, not arithmetic. The trace runs the same operations from
TorchScript's interpreter, so the outputs are identical (checked in the tests) and one sentence
takes about a quarter less time (BENCHMARKS.md).

``torch.jit.trace`` is deprecated in favour of ``torch.compile``, but on this model
``torch.compile`` made the step slower (its graph breaks at the int8 layers), so the trace is
what pays with the pinned PyTorch. Its deprecation notice and the int8 layers' tracer warnings
(shape checks that are constant for a model) are silenced while tracing.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch
from torch import nn

from nmt.model.decoders import State


class _Step(nn.Module):
    """``model.step`` with the state passed as tensors in ``keys`` order (a trace takes no dicts
    of varying content). Returns log-probs, the new ``updated`` entries and the attention, if any."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], updated: tuple[str, ...]):
        super().__init__()
        self.model, self.keys, self.updated = model, keys, updated

    def forward(self, tokens: torch.Tensor, *values: torch.Tensor):
        logp, attn, state = self.model.step(tokens, dict(zip(self.keys, values)))
        out = (logp,) + tuple(state[k] for k in self.updated)
        return out if attn is None else out + (attn,)


# TorchScript keeps every trace's code in its global compilation unit for the life of the process
# (pytorch/pytorch#35600): about 1 MB a trace of this model, never freed when the model is. A
# server that loads and evicts models would grow without end, so a process traces at most this
# many steps; later models search with the eager step (the same results, slower for one sentence).
# torch.jit.freeze is not used: it made the weights constants of that unit, so each evicted model
# stayed in memory whole (12 MB a cycle in bench/load_cycles.py), and it bought int8 search nothing.
MAX_TRACES = int(os.environ.get("NMT_MAX_TRACES") or 16)
_traces_made = 0
_traces_lock = threading.Lock()


def take_trace_slot() -> bool:
    """Whether one more trace may be made in this process (see MAX_TRACES); counts it."""
    global _traces_made
    with _traces_lock:
        if _traces_made >= MAX_TRACES:
            return False
        _traces_made += 1
        return True


class TracedSearchModel:
    """The search interface (``encode``, ``step``, ``sentence_keys``) of a model in eval mode,
    whose ``step`` is traced at its first call and replayed after that. The step must have no
    Python branch on tensor values (``Seq2Seq.step`` has none): a trace would freeze it.

    The trace holds no sizes: the same trace serves any number of sentences, hypotheses and
    source positions. Thread-safe (``inter_threads`` searches share one)."""

    def __init__(self, model: nn.Module):
        if model.training:
            raise ValueError("trace a model in eval mode (a trace would freeze its dropout masks)")
        self.model = model
        self.sentence_keys = model.sentence_keys
        self._traced: torch.jit.ScriptModule | None = None
        self._keys: tuple[str, ...] = ()
        self._updated: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> State:
        return self.model.encode(src, lengths)

    def step(self, tokens: torch.Tensor, state: State):
        if self._traced is None:
            self._trace(tokens, state)
        if tuple(state) != self._keys:
            raise ValueError(f"state entries {tuple(state)} differ from the traced {self._keys}")
        out = self._traced(tokens, *state.values())
        new = dict(state)
        new.update(zip(self._updated, out[1 : 1 + len(self._updated)]))
        attn = out[1 + len(self._updated)] if len(out) > 1 + len(self._updated) else None
        return out[0], attn, new

    def _trace(self, tokens: torch.Tensor, state: State) -> None:
        with self._lock:
            if self._traced is not None:
                return
            keys = tuple(state)
            updated = tuple(k for k in keys if k not in self.sentence_keys)  # what a step changes
            example = (tokens, *state.values())
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                example = tuple(x.clone() for x in example)  # (a trace cannot record inference tensors)
                traced = torch.jit.trace(_Step(self.model, keys, updated).eval(), example, check_trace=False)
            self._keys, self._updated, self._traced = keys, updated, traced
