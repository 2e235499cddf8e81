"""The Python API: load a checkpoint (folder or Hub repo) and translate raw text."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nmt.checkpoint import MAX_PARAMETERS, Checkpoint, load_checkpoint
from nmt.config import DecodeConfig, from_dict
from nmt.data import pad
from nmt.engines.cuda_graphs import GraphedBeamSearch
from nmt.engines.int8 import quantize_int8
from nmt.engines.tracing import TracedSearchModel, take_trace_slot
from nmt.errors import CheckpointError, NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.search.beam import Hypothesis, beam_search, greedy_search
from nmt.serving.unk import Replacement, load_lexicon, replace_unk
from nmt.tokenization import get_tokenizer
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    text: str
    tokens: list[str]
    score: float


@dataclass
class Translation:
    """One source sentence's translation and why: its attention over the source."""

    source: str
    src_tokens: list[str]
    text: str
    tokens: list[str]  # output tokens, after UNK replacement
    score: float  # length-normalized log-probability
    n_best: list[Candidate] = field(default_factory=list)
    attention: np.ndarray | None = None  # (len(tokens), len(src_tokens)), rows sum to 1
    replacements: list[Replacement] = field(default_factory=list)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Translator:
    def __init__(self, checkpoint: Checkpoint, device: str | torch.device | None = None):
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.model = checkpoint.model.to(self.device).eval()
        self.src_tok = get_tokenizer(checkpoint.src_lang)
        self.tgt_tok = get_tokenizer(checkpoint.tgt_lang)
        # The checkpoint's decoding defaults; its own lexicon (a file inside its folder) is
        # ``checkpoint.lexicon``, read at the first UNK replacement that needs it.
        self.defaults = dataclasses.replace(from_dict(DecodeConfig, checkpoint.extra.get("decode", {}), "decode"),
                                            lexicon="")
        self._lexicon: dict[str, str] | None = None
        self._search_models: dict[tuple[bool, bool], object] = {}
        self._graphed: GraphedBeamSearch | None = None  # made at the first search with CUDA graphs
        self._lock = threading.Lock()

    def search_model(self, int8: bool, trace: bool = False):
        """The model to search with: the fp32 one or its int8 copy (CPU only), and on a CPU with
        ``trace``, its step as a TorchScript trace (the same outputs). Each is made once."""
        if int8 and self.device.type != "cpu":
            raise NMTError("int8 decoding runs on the CPU only")
        # Only on a CPU (a GPU waits on kernel launches; untested there), and only a Seq2Seq, whose
        # step has no Python branch on tensor values that a trace would freeze.
        trace = trace and self.device.type == "cpu" and isinstance(self.model, Seq2Seq)
        with self._lock:  # (concurrent requests in the app)
            if (int8, False) not in self._search_models:
                self._search_models[int8, False] = quantize_int8(self.model) if int8 else self.model
            if trace and (int8, True) not in self._search_models:
                plain = self._search_models[int8, False]
                if take_trace_slot():
                    self._search_models[int8, True] = TracedSearchModel(plain)
                else:  # (said at every load past the limit: it is a server's warning sign)
                    logger.warning("this process has made the most traces it may (NMT_MAX_TRACES; TorchScript "
                                   "never frees one): searching with the eager step")
                    self._search_models[int8, True] = plain
            return self._search_models[int8, trace]

    def _graphed_search(self) -> GraphedBeamSearch:
        with self._lock:
            if self._graphed is None:
                self._graphed = GraphedBeamSearch(self.model)
            return self._graphed

    @classmethod
    def load(cls, name_or_path: str | Path, revision: str | None = None, device: str | None = None,
             token: str | None = None, max_parameters: int = MAX_PARAMETERS) -> "Translator":
        """A local checkpoint folder, or a Hugging Face Hub repo id (``user/name`` or ``user/name@rev``).
        Models with more than ``max_parameters`` are refused before their weights are read."""
        from nmt.hub import resolve_checkpoint

        folder = resolve_checkpoint(str(name_or_path), revision=revision, token=token)
        return cls(load_checkpoint(folder, max_parameters=max_parameters), device)

    @property
    def has_attention(self) -> bool:
        return self.model.has_attention

    def settings(self, **overrides) -> DecodeConfig:
        """The checkpoint's decoding defaults with ``overrides`` (None values ignored)."""
        cfg = dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def translate(self, sentences: list[str], beam_size: int | None = None, n_best: int | None = None,
                  replace_unk: bool | None = None, lexicon: dict[str, str] | str | Path | None = None,
                  length_penalty: float | None = None, max_len_a: float | None = None,
                  max_len_b: int | None = None, batch_size: int | None = None, int8: bool | None = None,
                  inter_threads: int | None = None, trace: bool | None = None,
                  cuda_graphs: bool | None = None) -> list[Translation]:
        """Translate raw sentences; unset options take the checkpoint's defaults."""
        cfg = self.settings(beam_size=beam_size, n_best=n_best, replace_unk=replace_unk, length_penalty=length_penalty,
                            max_len_a=max_len_a, max_len_b=max_len_b, batch_size=batch_size, int8=int8,
                            inter_threads=inter_threads, trace=trace, cuda_graphs=cuda_graphs)
        if cfg.replace_unk and not self.has_attention:
            raise NMTError("UNK replacement is unavailable: this model has no attention (attention 'none')")
        lexicon = self.lexicon_for(lexicon) if cfg.replace_unk else None
        src_tokens = [self.src_tok.tokenize(s) for s in sentences]
        hyps = self.search_tokens(src_tokens, cfg)
        return [self._result(s, toks, h, cfg, lexicon) for s, toks, h in zip(sentences, src_tokens, hyps)]

    def lexicon_for(self, lexicon: dict[str, str] | str | Path | None) -> dict[str, str] | None:
        """The lexicon UNK replacement uses: the one given (a dict, or the path of a file of the
        caller's), else the checkpoint's own (``decode.lexicon``), else none."""
        if isinstance(lexicon, dict):
            return lexicon
        if lexicon is not None and str(lexicon):
            return load_lexicon(lexicon)
        if self.checkpoint.lexicon is None:
            return None
        with self._lock:
            if self._lexicon is None:  # untrusted like the rest of the checkpoint: its lines are never echoed
                self._lexicon = load_lexicon(self.checkpoint.lexicon, echo=False, error=CheckpointError)
            return self._lexicon

    def search_tokens(self, src_tokens: list[list[str]], cfg: DecodeConfig) -> list[list[Hypothesis]]:
        """Search every tokenized sentence, in batches of similar length; order is kept.

        With ``cfg.inter_threads`` > 1 on a CPU, that many batches are searched at once, each
        by its share of the threads: one batch's Python bookkeeping then overlaps another's
        matrix products, where a single batch leaves the cores idle between small operations."""
        results: list[list[Hypothesis]] = [[] for _ in src_tokens]
        order = sorted((i for i, t in enumerate(src_tokens) if t), key=lambda i: len(src_tokens[i]))
        chunks = [order[start : start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]
        model = self.search_model(cfg.int8, cfg.trace)

        def search(chunk: list[int]) -> list[list[Hypothesis]]:
            ids = [self.checkpoint.src_vocab.encode(src_tokens[i]) for i in chunk]
            src = pad(ids).to(self.device)
            lengths = torch.tensor([len(x) for x in ids], device=self.device)
            return self._search(model, src, lengths, cfg)

        workers = min(cfg.inter_threads, len(chunks)) if self.device.type == "cpu" else 1
        if workers > 1:
            with intra_op_threads(max(1, torch.get_num_threads() // workers)), ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(search, chunks))
        else:
            found = [search(chunk) for chunk in chunks]
        for chunk, hyps in zip(chunks, found):
            for i, hyp in zip(chunk, hyps):
                results[i] = hyp
        return results

    def _search(self, model, src, lengths, cfg: DecodeConfig) -> list[list[Hypothesis]]:
        check_every = 1 if self.device.type == "cpu" else 4  # on a GPU each check is a host-device sync
        if self.device.type == "cuda" and cfg.cuda_graphs:  # (greedy is beam search with beam 1)
            return self._graphed_search()(src, lengths, cfg.beam_size, cfg.n_best, cfg.length_penalty,
                                          cfg.max_len_a, cfg.max_len_b, check_every=check_every)
        if cfg.beam_size == 1:
            return greedy_search(model, src, lengths, cfg.max_len_a, cfg.max_len_b, cfg.length_penalty, check_every)
        return beam_search(model, src, lengths, cfg.beam_size, cfg.n_best, cfg.length_penalty,
                           cfg.max_len_a, cfg.max_len_b, check_every=check_every)

    def _result(self, source: str, src_tokens: list[str], hyps: list[Hypothesis], cfg: DecodeConfig,
                lexicon: dict | None) -> Translation:
        if not hyps:  # empty input
            return Translation(source, src_tokens, "", [], 0.0)
        candidates, best = [], None
        for rank, hyp in enumerate(hyps):
            tokens = self.checkpoint.tgt_vocab.decode(hyp.tokens)
            replaced: list[Replacement] = []
            if cfg.replace_unk and hyp.attention is not None:
                tokens, replaced = replace_unk(tokens, src_tokens, hyp.attention, lexicon)
            candidates.append(Candidate(self.tgt_tok.detokenize(tokens), tokens, hyp.score))
            if rank == 0:
                best = (tokens, replaced, hyp)
        tokens, replaced, hyp = best
        attention = hyp.attention.numpy() if hyp.attention is not None else None
        return Translation(source, src_tokens, candidates[0].text, tokens, hyp.score, candidates, attention, replaced)

    @torch.inference_mode()
    def score(self, sources: list[str], references: list[str], batch_size: int = 64) -> list[tuple[float, int]]:
        """Log-likelihood of each reference given its source, and its token count (</s> included)."""
        src_tok = [self.src_tok.tokenize(s) for s in sources]
        ref_tok = [self.tgt_tok.tokenize(r) for r in references]
        if len(sources) != len(references):
            raise NMTError(f"{len(sources)} source sentences but {len(references)} references")
        scores = [(0.0, 0)] * len(sources)
        order = [i for i in range(len(sources)) if src_tok[i]]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src = [self.checkpoint.src_vocab.encode(src_tok[i]) for i in chunk]
            tgt = [self.checkpoint.tgt_vocab.encode(ref_tok[i]) for i in chunk]
            for i, t, s in zip(chunk, tgt, sequence_log_probs(self.model, src, tgt, self.device)):
                scores[i] = (s, len(t) + 1)
        return scores


@contextlib.contextmanager
def intra_op_threads(n: int):
    """PyTorch's CPU thread count set to ``n`` for the duration (a process-wide setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sequence_log_probs(model, src: list[list[int]], tgt: list[list[int]], device) -> list[float]:
    """Teacher-forced log p(tgt </s> | src) for each pair."""
    src_t = pad(src).to(device)
    lengths = torch.tensor([len(s) for s in src], device=device)
    tgt_in = pad([[BOS_ID] + t for t in tgt]).to(device)
    tgt_out = pad([t + [EOS_ID] for t in tgt]).to(device)
    logits, _ = model(src_t, lengths, tgt_in)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(tgt_out == PAD_ID, 0.0).sum(1).tolist()


def perplexity(total_log_prob: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood; inf (not an OverflowError) for a diverged model."""
    mean = -total_log_prob / max(1, n_tokens)
    return math.exp(mean) if mean < 709.0 else math.inf  # (exp overflows a float beyond ~709.78)
