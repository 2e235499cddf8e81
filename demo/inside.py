"""The look-inside API: /beam_tree, /what_if, /score and /neighbors, on one sentence.

In the spirit of Seq2Seq-Vis (Strobelt et al. 2018): the beam search as a tree, "what if" the
translation began differently, how the model scores a user's own translation (with a verdict:
search error or model error), and the training examples whose states are nearest. Every answer
comes from the ``nmt`` API (``Translator.beam_tree``, ``translate(prefix=...)``, ``score``,
``neighbors``; ``nmt.serving.inspection``); this module checks the input and makes JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from demo.checks import (
    MAX_CHARS,
    MAX_WORDS,
    InputProblem,
    choose_model,
    clean_text,
    decode_options,
    failure,
    split_input,
    status_html,
)
from demo.endpoints import replacements_json
from nmt import EngineConfig, NMTError, Translation, Translator
from nmt.search.tree import BeamTree
from nmt.serving import alignments, plots
from nmt.serving.inspection import judge
from nmt.serving.scoring import Scored

logger = logging.getLogger("nmt.app")
ALTERNATIVES = 8  # words the model considered, shown at each position
MAX_NEIGHBORS = 20


# ----------------------------------------------------------------------------- input
def one_sentence(text: str | None) -> tuple[str, list[str]]:
    """The sentence to look inside (the first, when the text has several) and notes."""
    sentences, notes = split_input(text)
    if len(sentences) > 1:
        notes.append(f"Looking inside the first of the {len(sentences)} sentences.")
    return sentences[0], notes


def target_text(text: str | None, what: str) -> str:
    """A prefix or translation typed by the user: cleaned, not empty, within the limits."""
    cleaned, _ = clean_text(text or "")
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise InputProblem(f"Type {what} first.")
    if len(cleaned) > MAX_CHARS or len(cleaned.split()) > MAX_WORDS:
        raise InputProblem(f"{what[0].upper()}{what[1:]} is too long: the limits are {MAX_WORDS} words and "
                           f"{MAX_CHARS:,} characters.")
    return cleaned


def whole_number(value, name: str) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise InputProblem(f"{name} must be a whole number (got {str(value)[:20]!r}).") from None


def search_settings(translator: Translator, beam_size) -> tuple[dict, list[str]]:
    """The beam and the app's length caps, as ``Translator.translate``/``beam_tree`` keywords."""
    options, notes = decode_options(translator, beam_size, 1, False, None)
    return {k: options[k] for k in ("beam_size", "max_len_a", "max_len_b")}, notes


def answer(endpoint: str, work) -> tuple[str, dict]:
    """Run ``work() -> (message, notes, result)`` with the app's error handling and timing."""
    started = time.perf_counter()
    try:
        message, notes, result = work()
    except (NMTError, InputProblem) as exc:
        return failure(str(exc))
    except Exception as exc:  # a bug: log it, tell the user what failed, keep serving
        logger.exception("%s failed", endpoint)
        return failure(f"Internal error ({type(exc).__name__}: {exc}).")
    seconds = round(time.perf_counter() - started, 3)
    return status_html(f"{message} ({seconds:.2f} s)", notes), {"ok": True, "error": None, "notes": notes,
                                                               "seconds": seconds, **result}


# ----------------------------------------------------------------------------- JSON
def figure_json(figure) -> dict:
    return json.loads(figure.to_json())


def tree_json(tree: BeamTree) -> dict:
    return {"nodes": [dataclasses.asdict(n) for n in tree.nodes], "best_path": tree.best_path,
            "beam_size": tree.beam_size, "forced": tree.forced, "translation": tree.translation,
            "figure": figure_json(plots.beam_tree_figure(tree))}


def scored_json(s: Scored, words: list[str] | None = None, langs: tuple[str, str] | None = None) -> dict:
    """A forced decoding: each token (and </s>) with its probability and the words the model preferred
    (``langs``: source and target language, to draw a word aligner's links where the pair is known)."""
    tokens = s.tokens + ["</s>"]
    return {"translation": s.translation, "tokens": s.tokens, "words": (words or s.tokens) + ["</s>"],
            "token_log_probs": s.token_log_probs, "log_prob": s.log_prob, "score": s.score,
            "alternatives": [[{"word": w, "prob": p} for w, p in alts] for alts in s.alternatives],
            "attention_figure": attention_json(s.source, s.src_tokens, s.translation, tokens, s.score, s.attention,
                                               langs=langs, words=words or s.tokens)}


def attention_json(source, src_tokens, text, tokens, score, attention, replacements=(), langs=None,
                   words=None) -> dict | None:
    """The heatmap as JSON; with ``langs``, a word aligner's links on it where (``src_tokens``, ``words``:
    the output's words, default ``tokens``) is a known pair (``nmt.serving.alignments``)."""
    if attention is None or not tokens:
        return None
    fig = plots.attention_figure(Translation(source, src_tokens, text, tokens, score, attention=attention,
                                             replacements=list(replacements)))
    if langs:
        alignments.mark_known_links(fig, *langs, src_tokens, tokens if words is None else words)
    return figure_json(fig)


def languages(translator: Translator) -> tuple[str, str]:
    return translator.checkpoint.src_lang, translator.checkpoint.tgt_lang


def model_json(model: dict) -> dict:
    return {k: model[k] for k in ("name", "source", "attention", "src_lang", "tgt_lang")}


# ----------------------------------------------------------------------------- endpoints
def beam_tree(text: str, direction: str | None = None, attention: str = "general", hub_id: str = "",
              beam_size: float = 5) -> tuple[str, dict]:
    """The beam search of one sentence as a tree, and the words the model considered at each position.

    Args:
        text: the sentence (the first one, when the text has several).
        direction, attention, hub_id: the model, as for /translate.
        beam_size: beam size, 1 to 10.

    Returns:
        status: an HTML message.
        result: {"ok", "error", "notes", "seconds", "model", "sentence", "src_tokens", "translation", "tokens",
            "score", "tree": {"nodes": [{"id", "parent", "step", "token", "logp", "score", "normalized",
            "status" ("kept" | "pruned" | "finished")}], "best_path" (node ids, first token to </s>), "beam_size",
            "forced", "translation", "figure" (Plotly JSON)}, "best": {the /score fields of the best translation:
            "tokens", "token_log_probs", "alternatives": [[{"word", "prob"}] per position], "attention_figure"}}.
    """
    def work():
        sentence, notes = one_sentence(text)
        translator, model = choose_model(direction, attention, hub_id)
        settings, more = search_settings(translator, beam_size)
        tree = translator.beam_tree(sentence, engine=EngineConfig(), **settings)
        tokens = [n.token for n in (tree.nodes[i] for i in tree.best_path[:-1])]
        [best] = translator.score([sentence], [tokens], alternatives=ALTERNATIVES)
        kept = sum(n.status != "pruned" for n in tree.nodes)
        message = (f"Beam search of {settings['beam_size']} with {model['name']}: {len(tree.nodes)} candidates, "
                   f"{kept} kept or finished")
        return message, notes + more, {"model": model_json(model), "sentence": sentence, "src_tokens": tree.src_tokens,
                                       "translation": tree.translation, "tokens": tokens, "score": best.score,
                                       "tree": tree_json(tree), "best": scored_json(best, langs=languages(translator))}
    return answer("beam_tree", work)


def what_if(text: str, direction: str | None = None, attention: str = "general", hub_id: str = "",
            beam_size: float = 5, prefix: str = "", replace_unk: bool = True) -> tuple[str, dict]:
    """Translate one sentence again, continuing from a given beginning (a forced prefix).

    Args:
        text: the sentence (the first one, when the text has several).
        direction, attention, hub_id, beam_size, replace_unk: as for /translate.
        prefix: how the translation must begin (target-language words the model knows).

    Returns:
        status: an HTML message.
        result: {"ok", "error", "notes", "seconds", "model", "sentence", "prefix", "translation", "tokens", "forced"
            (tokens forced), "score", "unk_replacements", "attention_figure", "original": {"translation", "score"},
            "difference" (score minus the original's), "tree" (the search from the prefix, as in /beam_tree)}.
    """
    def work():
        sentence, notes = one_sentence(text)
        begin = target_text(prefix, "a beginning for the translation (a prefix)")
        translator, model = choose_model(direction, attention, hub_id)
        options, more = decode_options(translator, beam_size, 1, replace_unk, None)
        original, changed = translator.translate([sentence, sentence], engine=EngineConfig(), prefix=["", begin],
                                                 **options)
        settings = {k: options[k] for k in ("beam_size", "max_len_a", "max_len_b")}
        tree = translator.beam_tree(sentence, engine=EngineConfig(), prefix=begin, **settings)
        difference = changed.score - original.score
        compared = ("the same as" if abs(difference) < 5e-4 else
                    f"{abs(difference):.3f} {'below' if difference < 0 else 'above'}")
        message = (f"From {changed.forced} forced word{'s' * (changed.forced != 1)}: score {changed.score:.3f}, "
                   f"{compared} the model's own ({original.score:.3f})")
        return message, notes + more, {
            "model": model_json(model), "sentence": sentence, "prefix": begin, "translation": changed.text,
            "tokens": changed.tokens, "forced": changed.forced, "score": changed.score,
            "unk_replacements": replacements_json(changed.replacements),
            "attention_figure": attention_json(sentence, changed.src_tokens, changed.text, changed.tokens,
                                               changed.score, changed.attention, changed.replacements,
                                               langs=languages(translator)),
            "original": {"translation": original.text, "score": original.score}, "difference": difference,
            "tree": tree_json(tree)}
    return answer("what_if", work)


def score(text: str, direction: str | None = None, attention: str = "general", hub_id: str = "",
          beam_size: float = 5, translation: str = "") -> tuple[str, dict]:
    """Score a translation of one sentence against the model's own best, word by word, with a verdict.

    Args:
        text: the sentence (the first one, when the text has several).
        direction, attention, hub_id, beam_size: as for /translate (the beam finds the model's own best).
        translation: your translation.

    Returns:
        status: an HTML message.
        result: {"ok", "error", "notes", "seconds", "model", "sentence", "verdict" ("same" | "search error" |
            "model error"), "message", "difference" (your score minus the model's), "unknown_words",
            "yours" and "model": {"translation", "tokens", "words", "token_log_probs" (one per token and </s>),
            "log_prob", "score", "alternatives": [[{"word", "prob"}] per position], "attention_figure"}}.
    """
    def work():
        sentence, notes = one_sentence(text)
        given = target_text(translation, "your translation")
        translator, model = choose_model(direction, attention, hub_id)
        settings, more = search_settings(translator, beam_size)
        words = translator.tgt_tok.tokenize(given)
        verdict = judge(translator, sentence, given, alternatives=ALTERNATIVES, **settings)
        unknown = [w for w, t in zip(words, verdict.yours.tokens) if t == "<unk>"]
        if len(unknown) == len(words):
            raise InputProblem("None of the words of your translation is known to the model (all are <unk>): "
                               "there is nothing to score.")
        if unknown:
            more.append(f"Unknown to the model (scored as <unk>): {', '.join(dict.fromkeys(unknown))}.")
        if not translator.has_attention:
            more.append("This model has no attention (attention 'none'): there is no heatmap to show.")
        return f"Scored your translation with {model['name']}: {verdict.kind}", notes + more, {
            "model": model_json(model), "sentence": sentence, "verdict": verdict.kind, "message": verdict.message,
            "difference": verdict.difference, "unknown_words": list(dict.fromkeys(unknown)),
            "yours": scored_json(verdict.yours, words, languages(translator)),
            "model_best": scored_json(verdict.best, langs=languages(translator))}
    return answer("score", work)


def neighbors(text: str, direction: str | None = None, attention: str = "general", hub_id: str = "",
              translation: str = "", position: float = 0, side: str = "target", k: float = 10) -> tuple[str, dict]:
    """The training pairs whose model states are nearest to one word's (a FAISS index of the training data).

    Args:
        text: the sentence (the first one, when the text has several).
        direction, attention, hub_id: the model, as for /translate.
        translation: the translation whose word is looked up ("" for the model's own best).
        position: the word's index (0-based) in the tokenized translation (side "target") or source (side "source").
        side: "target" (the decoder's state while producing the word) or "source" (the encoder's state of the word).
        k: how many neighbours, 1 to 20.

    Returns:
        status: an HTML message.
        result: {"ok", "error", "notes", "seconds", "model", "sentence", "side", "position", "word", "neighbors":
            [{"source", "target", "tokens" (the training sentence's tokens on that side), "position" (the matching
            word in them), "distance"}]}.
    """
    def work():
        sentence, notes = one_sentence(text)
        if side not in ("target", "source"):
            raise InputProblem(f"side must be 'target' or 'source' (got {str(side)[:20]!r}).")
        count, where = whole_number(k or 10, "k"), whole_number(position or 0, "position")
        if not 1 <= count <= MAX_NEIGHBORS:
            raise InputProblem(f"The number of neighbours must be between 1 and {MAX_NEIGHBORS} (got {count}).")
        given = target_text(translation, "a translation") if (translation or "").strip() else None
        translator, model = choose_model(direction, attention, hub_id)
        found = translator.neighbors(sentence, given, where, side, count)
        words = (translator.src_tok.tokenize(sentence) if side == "source" else
                 translator.tgt_tok.tokenize(given) if given else None)
        word = words[where] if words and 0 <= where < len(words) else None
        rows = [{"source": n.source, "target": n.target, "tokens": n.tokens, "position": n.position,
                 "distance": n.distance} for n in found]
        return (f"The {len(rows)} nearest training examples ({side} side)", notes,
                {"model": model_json(model), "sentence": sentence, "side": side, "position": where, "word": word,
                 "neighbors": rows})
    return answer("neighbors", work)
