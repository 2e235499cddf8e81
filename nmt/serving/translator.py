"""The Python API: load a checkpoint (folder or Hub repo) and translate raw text."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nmt.checkpoint import MAX_PARAMETERS, Checkpoint, download_limits, load_checkpoint
from nmt.config import DecodeConfig, EngineConfig, from_dict
from nmt.data import pad
from nmt.device import pick_device
from nmt.engines.search_engine import Engines
from nmt.errors import CheckpointError, NMTError
from nmt.safe_io import checkpoint_file
from nmt.search import Hypothesis
from nmt.serving.unk import Replacement, load_lexicon, replace_unk
from nmt.tokenization import get_tokenizer
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID


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
        self.engines = Engines(self.model, self.device)  # how search runs: made once per setting
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str | Path, revision: str | None = None, device: str | None = None,
             token: str | None = None, max_parameters: int = MAX_PARAMETERS,
             cache_dir: str | Path | None = None) -> "Translator":
        """A local checkpoint folder, or a Hugging Face Hub repo id (``user/name`` or ``user/name@rev``),
        downloaded to ``cache_dir`` (default: the Hub's cache). Models with more than ``max_parameters``
        are refused before their weights are downloaded or read."""
        from nmt.hub import resolve_checkpoint

        folder = resolve_checkpoint(str(name_or_path), revision=revision, token=token,
                                    max_bytes=download_limits(max_parameters), cache_dir=cache_dir)
        return cls(load_checkpoint(folder, max_parameters=max_parameters), device)

    @property
    def has_attention(self) -> bool:
        return self.model.has_attention

    def settings(self, config: DecodeConfig | None = None, **overrides) -> DecodeConfig:
        """``config`` (default: the checkpoint's decoding defaults) with ``overrides`` (None ignored)."""
        cfg = dataclasses.replace(config or self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def translate(self, sentences: list[str], config: DecodeConfig | None = None, engine: EngineConfig | None = None,
                  lexicon: dict[str, str] | str | Path | None = None, **overrides) -> list[Translation]:
        """Translate raw sentences with ``config`` (default: the checkpoint's ``decode`` settings; one
        given replaces them all), run by ``engine`` (default: ``EngineConfig()``); keyword ``overrides``
        change single fields of either (``beam_size=10``, ``int8=True``). ``lexicon``: for UNK
        replacement, a dict or a file path (default: ``config.lexicon``, else the checkpoint's own)."""
        cfg, engine_cfg = self._configs(config, engine, overrides)
        if cfg.replace_unk and not self.has_attention:
            raise NMTError("UNK replacement is unavailable: this model has no attention (attention 'none')")
        lexicon = self.lexicon_for(cfg.lexicon or None if lexicon is None else lexicon) if cfg.replace_unk else None
        src_tokens = [self.src_tok.tokenize(s) for s in sentences]
        hyps = self.search_tokens(src_tokens, cfg, engine_cfg)
        return [self._result(s, toks, h, cfg, lexicon) for s, toks, h in zip(sentences, src_tokens, hyps)]

    def _configs(self, config, engine, overrides: dict) -> tuple[DecodeConfig, EngineConfig]:
        engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
        decode_fields = {f.name for f in dataclasses.fields(DecodeConfig)} - {"lexicon"}
        unknown = set(overrides) - engine_fields - decode_fields
        if unknown:
            raise TypeError(f"translate() got unknown settings: {', '.join(sorted(unknown))}")
        engine_cfg = dataclasses.replace(engine or EngineConfig(),
                                         **{k: v for k, v in overrides.items() if k in engine_fields and v is not None})
        return self.settings(config, **{k: v for k, v in overrides.items() if k in decode_fields}), engine_cfg

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
                path = self.checkpoint.lexicon  # (checked again now: the folder may have changed since loading)
                checkpoint_file(path.parent, path.name, "lexicon (decode.lexicon)")
                self._lexicon = load_lexicon(path, echo=False, error=CheckpointError)
            return self._lexicon

    def search_tokens(self, src_tokens: list[list[str]], cfg: DecodeConfig,
                      engine: EngineConfig | None = None) -> list[list[Hypothesis]]:
        """Search every tokenized sentence (``nmt.engines.search_engine.SearchEngine.search_ids``)."""
        searcher = self.engines.get(engine or EngineConfig())
        return searcher.search_ids([self.checkpoint.src_vocab.encode(t) for t in src_tokens], cfg)

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


def sequence_log_probs(model, src: list[list[int]], tgt: list[list[int]], device) -> list[float]:
    """Teacher-forced log p(tgt </s> | src) for each pair."""
    src_t = pad(src).to(device)
    lengths = torch.tensor([len(s) for s in src], device=device)
    tgt_in = pad([[BOS_ID] + t for t in tgt]).to(device)
    tgt_out = pad([t + [EOS_ID] for t in tgt]).to(device)
    logits, _ = model(src_t, lengths, tgt_in)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(tgt_out == PAD_ID, 0.0).sum(1).tolist()
