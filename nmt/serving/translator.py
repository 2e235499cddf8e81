"""The Python API: load a checkpoint (folder or Hub repo) and translate raw text."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nmt.data import pad
from nmt.checkpoint import MAX_PARAMETERS, Checkpoint, download_limits, load_checkpoint
from nmt.config import DecodeConfig, EngineConfig, from_dict
from nmt.device import pick_device
from nmt.engines.int8 import int8_keeps_quality
from nmt.engines.search_engine import Engines
from nmt.errors import CheckpointError, NMTError
from nmt.safe_io import checkpoint_file
from nmt.search import Hypothesis, beam_search
from nmt.search.core import forced_tokens
from nmt.search.ensemble import Ensemble
from nmt.search.history import History
from nmt.search.tree import BeamTree, build_tree
from nmt.serving.neighbors import Neighbor, find_neighbors
from nmt.serving.scoring import Forced, Scored, forced_decoding, normalized_score
from nmt.serving.unk import Replacement, load_lexicon, replace_unk
from nmt.tokenization import get_tokenizer
from nmt.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID)  # never read from a user's text


@dataclass
class Candidate:
    text: str
    tokens: list[str]
    score: float
    attention: np.ndarray | None = None  # (len(tokens), len(src_tokens))
    replacements: list[Replacement] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the target ids search found (before UNK replacement)


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
    forced: int = 0  # how many leading tokens were the given prefix's


class Translator:
    """Translates with one checkpoint, or with an ensemble of several of the same vocabularies
    (``nmt.search.ensemble``; the first one's decoding defaults, lexicon and tokenizers)."""

    def __init__(self, checkpoint: Checkpoint | list[Checkpoint], device: str | torch.device | None = None):
        self.checkpoints = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
        check_ensemble(self.checkpoints)
        self.checkpoint = self.checkpoints[0]
        self.device = pick_device(device)
        members = [c.model.to(self.device).eval() for c in self.checkpoints]
        self.model = members[0] if len(members) == 1 else Ensemble(members)
        self.src_tok = get_tokenizer(self.checkpoint.src_lang, self.checkpoint.inputs.mode == "inline")
        self.tgt_tok = get_tokenizer(self.checkpoint.tgt_lang)
        # The checkpoint's decoding defaults; its own lexicon (a file inside its folder) is
        # ``checkpoint.lexicon``, read at the first UNK replacement that needs it.
        self.defaults = dataclasses.replace(from_dict(DecodeConfig, self.checkpoint.extra.get("decode", {}), "decode"),
                                            lexicon="")
        self._lexicon: dict[str, str] | None = None
        # How search runs, made once per setting; int8 by default where every model records it keeps its BLEU.
        int8_default = all(int8_keeps_quality(c.extra.get("int8")) for c in self.checkpoints)
        self.engines = Engines(self.model, self.device, int8_default)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str | Path | list[str | Path], revision: str | None = None, device: str | None = None,
             token: str | None = None, max_parameters: int = MAX_PARAMETERS,
             cache_dir: str | Path | None = None) -> Translator:
        """A local checkpoint folder, or a Hugging Face Hub repo id (``user/name`` or ``user/name@rev``),
        downloaded to ``cache_dir`` (default: the Hub's cache); a list of them is an ensemble. Models
        with more than ``max_parameters`` (each) are refused before their weights are downloaded or read."""
        from nmt.hub import resolve_checkpoint

        names = [name_or_path] if isinstance(name_or_path, (str, Path)) else list(name_or_path)
        if not names:
            raise NMTError("no model given")
        checkpoints = [load_checkpoint(resolve_checkpoint(str(name), revision=revision, token=token,
                                                          max_bytes=download_limits(max_parameters), cache_dir=cache_dir),
                                       max_parameters=max_parameters) for name in names]
        return cls(checkpoints, device)

    @property
    def model_cfg(self):
        return self.checkpoint.model.cfg

    def source_ids(self, src_tokens: list[list[str]]) -> list[list[int]] | list[list[list[int]]]:
        """The encoder's input ids of tokenized sentences (word ids, or rows of characters and
        features: ``nmt.inputs``); a malformed feature is an error naming the sentence and word."""
        inputs = self.checkpoint.inputs
        return [inputs.encode(t, f"sentence {i + 1}") for i, t in enumerate(src_tokens)]

    @property
    def is_ensemble(self) -> bool:
        return len(self.checkpoints) > 1

    @property
    def has_attention(self) -> bool:
        return self.model.has_attention

    def settings(self, config: DecodeConfig | None = None, **overrides) -> DecodeConfig:
        """``config`` (default: the checkpoint's decoding defaults) with ``overrides`` (None ignored)."""
        cfg = dataclasses.replace(config or self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def translate(self, sentences: list[str], config: DecodeConfig | None = None, engine: EngineConfig | None = None,
                  lexicon: dict[str, str] | str | Path | None = None, prefix: list[str] | list[list[str]] | None = None,
                  **overrides) -> list[Translation]:
        """Translate raw sentences with ``config`` (default: the checkpoint's ``decode`` settings; one
        given replaces them all), run by ``engine`` (default: ``EngineConfig()``); keyword ``overrides``
        change single fields of either (``beam_size=10``, ``int8=True``). ``lexicon``: for UNK
        replacement, a dict or a file path (default: ``config.lexicon``, else the checkpoint's own).
        ``prefix``: one string per sentence ("" for none), tokenized like the target, or its tokens: search
        continues from it ("what if the translation began like this?"); ``Translation.forced`` counts them."""
        cfg, engine_cfg = self._configs(config, engine, overrides)
        if cfg.replace_unk and not self.has_attention:
            raise NMTError("UNK replacement is unavailable: this model has no attention (attention 'none')")
        lexicon = self.lexicon_for(cfg.lexicon or None if lexicon is None else lexicon) if cfg.replace_unk else None
        src_tokens = [self.src_tok.tokenize(s) for s in sentences]
        check_lengths(src_tokens, cfg.max_sent_l)
        prefixes = self.prefix_ids(prefix, len(sentences))
        hyps = self.search_tokens(src_tokens, cfg, engine_cfg, prefixes)
        return [self._result(s, toks, h, cfg, lexicon, len(p) if p else 0)
                for s, toks, h, p in zip(sentences, src_tokens, hyps, prefixes or [[]] * len(sentences))]

    def prefix_ids(self, prefix: list[str] | None, n: int) -> list[list[int]] | None:
        """Target ids of each sentence's prefix; a word the model cannot produce is an error."""
        if prefix is None:
            return None
        if isinstance(prefix, str) or len(prefix) != n:
            raise NMTError(f"prefix must be a list of one string per sentence ({n}); got "
                           f"{'a string' if isinstance(prefix, str) else len(prefix)}")
        vocab, out = self.checkpoint.tgt_vocab, []
        for text in prefix:
            tokens = list(text) if isinstance(text, (list, tuple)) else self.tgt_tok.tokenize(text or "")
            unknown = [t for t in tokens if t not in vocab.stoi or vocab.stoi[t] in SPECIAL_IDS]
            if unknown:
                shown = ", ".join(repr(t[:40]) for t in dict.fromkeys(unknown[:5]))
                raise NMTError(f"the prefix has words this model cannot produce (not in its target vocabulary): {shown}")
            out.append(vocab.encode(tokens))
        return out

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

    def search_tokens(self, src_tokens: list[list[str]], cfg: DecodeConfig, engine: EngineConfig | None = None,
                      prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Search every tokenized sentence (``nmt.engines.search_engine.SearchEngine.search_ids``)."""
        searcher = self.engines.get(engine or EngineConfig())
        return searcher.search_ids(self.source_ids(src_tokens), cfg, prefixes)

    def _result(self, source: str, src_tokens: list[str], hyps: list[Hypothesis], cfg: DecodeConfig,
                lexicon: dict | None, forced: int = 0) -> Translation:
        if not hyps:  # empty input
            return Translation(source, src_tokens, "", [], 0.0)
        candidates = []
        for hyp in hyps:
            tokens = self.checkpoint.tgt_vocab.decode(hyp.tokens)
            replaced: list[Replacement] = []
            if cfg.replace_unk and hyp.attention is not None:
                tokens, replaced = replace_unk(tokens, self.checkpoint.inputs.words_of(src_tokens), hyp.attention, lexicon)
            attention = hyp.attention.numpy() if hyp.attention is not None else None
            candidates.append(Candidate(self.tgt_tok.detokenize(tokens), tokens, hyp.score, attention, replaced,
                                        list(hyp.tokens)))
        best = candidates[0]
        return Translation(source, src_tokens, best.text, best.tokens, best.score, candidates, best.attention,
                           best.replacements, forced)

    def beam_tree(self, source: str, config: DecodeConfig | None = None, engine: EngineConfig | None = None,
                  prefix: str | list[str] = "", **overrides) -> BeamTree:
        """The beam search of one sentence as a tree (``nmt.search.tree``): every candidate each step
        weighed, kept, pruned or finished, recorded by the same search ``translate`` runs (settings
        as there; ``n_best`` does not matter), so its best path is ``translate``'s best hypothesis.
        Beam size 1 is beam search with one beam: greedy search's result without a length penalty."""
        cfg, engine_cfg = self._configs(config, engine, overrides)
        src_tokens = self.src_tok.tokenize(source)
        if not src_tokens:
            raise NMTError("Nothing to translate: the sentence is empty")
        prefixes = self.prefix_ids([prefix], 1)
        engine_cfg = self.engines.resolve(engine_cfg)
        model = self.engines.model_for(engine_cfg.int8, engine_cfg.trace) if self.device.type == "cpu" else self.model
        src = pad(self.source_ids([src_tokens])).to(self.device)
        history = History()
        [[best, *_]] = beam_search(model, src, torch.tensor([src.size(1)], device=self.device), cfg.beam_size, 1,
                                   cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, history=history,
                                   forced=forced_tokens(prefixes, self.device))
        nodes, path = build_tree(history, best, cfg.beam_size, cfg.length_penalty, self.checkpoint.tgt_vocab.itos.__getitem__)
        text = self.tgt_tok.detokenize(self.checkpoint.tgt_vocab.decode(best.tokens))
        return BeamTree(source, src_tokens, nodes, path, cfg.beam_size, cfg.length_penalty, len(prefixes[0]), text)

    def neighbors(self, source: str, translation: str | None = None, position: int = 0, side: str = "target",
                  k: int = 10) -> list[Neighbor]:
        """The ``k`` training pairs whose states are nearest to this one's at ``position`` of the
        translation (``side="target"``: the decoder's attentional state; with ``translation`` None,
        the model's own best) or of the source (``side="source"``: the encoder's): ``nmt.serving.neighbors``."""
        if self.is_ensemble:
            raise NMTError("nearest training examples are found in one model's states: load that model alone")
        return find_neighbors(self, source, translation, position, side, k)

    def score(self, sources: list[str], translations: list[str] | list[list[str]], length_penalty: float | None = None,
              alternatives: int = 5) -> list[Scored]:
        """Forced decoding of each given translation of its source (``nmt.serving.scoring``): every
        token's log-probability, the attention, the ``alternatives`` most probable words at every
        position, and the score normalized with ``length_penalty`` (default: the checkpoint's) as
        search normalizes, so scoring search's own best output (without UNK replacement) gives its
        ``Translation.score``. A translation is raw text, or its tokens (``Translation.tokens``: detokenizing
        is not always reversible, "soccer . ." reads back as "soccer .."). An empty source scores 0 with no tokens."""
        if len(sources) != len(translations):
            raise NMTError(f"{len(sources)} source sentences but {len(translations)} translations")
        alpha = self.settings(length_penalty=length_penalty).length_penalty
        src_tok = [self.src_tok.tokenize(s) for s in sources]
        tgt_tok = [list(t) if isinstance(t, (list, tuple)) else self.tgt_tok.tokenize(t or "") for t in translations]
        vocab = self.checkpoint.tgt_vocab
        tgt_ids = [[UNK_ID if i in SPECIAL_IDS else i for i in vocab.encode(t)] for t in tgt_tok]
        todo = [i for i in range(len(sources)) if src_tok[i]]
        forced = forced_decoding(self.model, self.source_ids([src_tok[i] for i in todo]),
                                 [tgt_ids[i] for i in todo], self.device, alternatives)
        found = dict(zip(todo, forced))
        texts = [self.tgt_tok.detokenize(t) if isinstance(t, (list, tuple)) else t for t in translations]
        return [self._scored(sources[i], src_tok[i], texts[i], tgt_ids[i], found.get(i), alpha)
                for i in range(len(sources))]

    def attention_by_model(self, translation: Translation, candidate: int = 0) -> list[np.ndarray | None]:
        """Each model's own attention over the tokens search found for ``translation.n_best[candidate]``
        (forced decoding by each model; rows as ``Candidate.attention``). An ensemble searches with
        their mean, so these average to the candidate's attention. One model: its attention."""
        if not translation.src_tokens:
            return [None] * len(self.checkpoints)
        found = self.n_best_ids(translation, candidate)
        src = self.source_ids([translation.src_tokens])
        members = self.model.members if self.is_ensemble else [self.model]
        out = []
        for member in members:
            [forced] = forced_decoding(member, src, [found], self.device, 0)
            out.append(forced.attention[: len(found)].numpy() if forced.attention is not None else None)
        return out

    @staticmethod
    def n_best_ids(translation: Translation, candidate: int = 0) -> list[int]:
        if not 0 <= candidate < len(translation.n_best):
            raise NMTError(f"candidate {candidate} is not in this translation's n-best list ({len(translation.n_best)})")
        return translation.n_best[candidate].ids

    def _scored(self, source, src_tokens, translation, ids, forced: Forced | None, alpha: float) -> Scored:
        tokens = self.checkpoint.tgt_vocab.decode(ids)
        if forced is None:
            return Scored(source, src_tokens, translation, tokens, [], 0.0, 0.0, None, [])
        itos = self.checkpoint.tgt_vocab.itos
        alternatives = [[(itos[w], p) for w, p in zip(ws, ps)] for ws, ps in zip(forced.top_ids, forced.top_probs)]
        attention = forced.attention.numpy() if forced.attention is not None else None
        return Scored(source, src_tokens, translation, tokens, forced.log_probs, float(sum(forced.log_probs)),
                      normalized_score(forced.log_probs, alpha), attention, alternatives)


def check_ensemble(checkpoints: list[Checkpoint]) -> None:
    """The models of an ensemble must read and write the same words in the same languages."""
    first = checkpoints[0]
    for i, other in enumerate(checkpoints[1:], start=2):
        for what, a, b in (("source vocabulary", first.src_vocab.itos, other.src_vocab.itos),
                           ("target vocabulary", first.tgt_vocab.itos, other.tgt_vocab.itos),
                           ("languages", (first.src_lang, first.tgt_lang), (other.src_lang, other.tgt_lang)),
                           ("source input (characters, word features)", _input_kind(first), _input_kind(other))):
            if a != b:
                raise NMTError(f"model {i} of the ensemble has another {what} than model 1 "
                               f"({_shown(other.path)} vs {_shown(first.path)}); an ensemble needs models of the same vocabularies")


def _input_kind(ck: Checkpoint) -> tuple:
    """What the encoder reads: every model of an ensemble gets the same source ids."""
    inputs = ck.inputs
    return (inputs.mode, inputs.max_word_length if inputs.chars else 0, inputs.chars.itos if inputs.chars else None,
            [v.itos for v in inputs.features])


def _shown(path: Path | None) -> str:
    return str(path)[-80:] if path is not None else "?"


def check_lengths(src_tokens: list[list[str]], max_sent_l: int) -> None:
    """seq2seq-attn's ``max_sent_l``: a longer source is refused (not cut), naming its line."""
    if not max_sent_l:
        return
    for i, tokens in enumerate(src_tokens):
        if len(tokens) > max_sent_l:
            raise NMTError(f"sentence {i + 1} (line {i + 1} of a file) has {len(tokens)} tokens, more than "
                           f"max_sent_l {max_sent_l} (--max-sent-l)")
