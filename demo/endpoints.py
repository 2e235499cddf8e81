"""The translation API endpoints (/translate, /compare, /model_card) and the JSON they return."""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path

import numpy as np

from demo.checks import (
    DEFAULT_DIRECTION,
    MODELS,
    InputProblem,
    _bundled,
    choose_model,
    decode_options,
    failure,
    run_translation,
    split_input,
    status_html,
)
from nmt import Candidate, NMTError, Translation, Translator
from nmt.serving import alignments, catalog, plots
from nmt.serving.tracked import read_tracked
from nmt.serving.unk import Replacement

logger = logging.getLogger("nmt.app")


# ----------------------------------------------------------------------------- results as JSON
def sentence_result(r: Translation, translator: Translator, compact: bool = False) -> dict:
    """One sentence's translation, n-best list, UNK replacements and attention figure, JSON-ready
    (``compact``: a heatmap for a narrow column); a word aligner's links drawn on it where the pair is known
    (``nmt.serving.alignments``: a data sentence translated as its reference)."""
    fig = plots.attention_figure(r, compact=compact) if r.attention is not None and r.tokens else None
    ckpt = translator.checkpoint
    links = alignments.mark_known_links(fig, ckpt.src_lang, ckpt.tgt_lang, r.src_tokens, r.tokens) if fig else None
    figure = json.loads(fig.to_json()) if fig else None
    return {
        "source": r.source, "src_tokens": r.src_tokens, "translation": r.text, "tokens": r.tokens,
        "score": round(float(r.score), 4),
        "n_best": [candidate_result(c) for c in r.n_best],
        "unk_replacements": replacements_json(r.replacements),
        "unknown_source_words": list(dict.fromkeys(translator.checkpoint.inputs.unknown(r.src_tokens))),
        "attention_figure": figure,
        "attention_note": None if figure else _no_attention_note(translator),
        "alignment_links": [list(link) for link in links] if links else None,
    }


def candidate_result(c: Candidate) -> dict:
    """An n-best candidate: text, score, tokens, UNK replacements and its own attention (rounded)."""
    attention = np.round(c.attention, 4).tolist() if c.attention is not None else None
    return {"text": c.text, "score": round(float(c.score), 4), "tokens": c.tokens,
            "unk_replacements": replacements_json(c.replacements), "attention": attention}


def replacements_json(replacements: list[Replacement]) -> list[dict]:
    return [{"position": x.position, "source_position": x.source_position, "source_word": x.source_word,
             "word": x.word} for x in replacements]


def _no_attention_note(translator: Translator) -> str:
    if not translator.has_attention:
        return "This model has no attention (attention 'none'): there is no heatmap to show."
    return "The translation is empty: there is no attention to show."


# ----------------------------------------------------------------------------- endpoints
def translate(text: str, direction: str | None = None, attention: str = "general", hub_id: str = "",
              beam_size: float = 5, n_best: float = 3, replace_unk: bool = True,
              lexicon: str | None = None) -> tuple[str, dict]:
    """Translate one or more sentences (a paragraph is split into sentences).

    Args:
        text: the source text (at most 2,000 characters and 20 sentences).
        direction: bundled language direction, e.g. "de-en" (ignored when hub_id is given; default: the first).
        attention: attention type of the bundled model: "none", "dot", "general" or "concat".
        hub_id: optional Hugging Face Hub checkpoint "user/name" or "user/name@revision"; "" for bundled.
        beam_size: beam size, 1 (greedy) to 10.
        n_best: how many alternatives to return per sentence (at most the beam size).
        replace_unk: replace <unk> outputs with the most attended source word (models with attention).
        lexicon: optional uploaded "source ||| target" file used by UNK replacement.

    Returns:
        status: an HTML message (errors and notes for the user).
        result: {"ok", "error", "notes", "model", "settings", "seconds", "sentences": [{"source", "src_tokens",
            "translation", "tokens", "score", "n_best": [{"text", "score", "tokens", "unk_replacements", "attention"
            (output x source weights, or null)}], "unk_replacements": [{"position",
            "source_position", "source_word", "word"}], "unknown_source_words", "attention_figure" (Plotly
            figure JSON, or null), "attention_note", "alignment_links" ([source, output] positions of a word
            aligner's links, drawn on the figure, when the pair is an aligned one of the data; else null)}]}.
    """
    started, notes = time.perf_counter(), []
    try:
        sentences, notes = split_input(text)
        translator, model = choose_model(direction, attention, hub_id)
        options, more = decode_options(translator, beam_size, n_best, replace_unk, lexicon)
        notes += more
        results = run_translation(translator, sentences, options)
        rows = [sentence_result(r, translator) for r in results]
    except (NMTError, InputProblem) as exc:
        return failure(str(exc), notes)
    except Exception as exc:  # a bug: log it, tell the user what failed, keep serving
        logger.exception("translation failed")
        return failure(f"Internal error while translating ({type(exc).__name__}: {exc}).", notes)
    seconds = round(time.perf_counter() - started, 3)
    settings = {**options, "lexicon": Path(options["lexicon"]).name if options["lexicon"] else None}
    message = (f"Translated {len(rows)} sentence{'s' * (len(rows) > 1)} with {model['name']} "
               f"({model['source']}, attention {model['attention']}) in {seconds:.2f} s.")
    return status_html(message, notes), {"ok": True, "error": None, "notes": notes, "model": model,
                                         "settings": settings, "seconds": seconds, "sentences": rows}


def compare(text: str, direction: str | None = None, beam_size: float = 5, replace_unk: bool = True,
            lexicon: str | None = None) -> tuple[str, dict]:
    """Translate the first sentence of ``text`` with every bundled word model of ``direction`` (one per
    attention kind; the character-CNN variants are chosen in the translate tab).

    Returns an HTML status and {"ok", "error", "notes", "sentence", "direction", "models": [{"name",
    "attention", "bleu", "error", ...the fields of one /translate sentence}]}.
    """
    try:
        sentences, notes = split_input(text)
        direction = direction or DEFAULT_DIRECTION
        models = [m for m in MODELS if m.direction == direction and not m.variant]
        if not models:
            _bundled(direction, None)  # raises the right message
    except (NMTError, InputProblem) as exc:
        return failure(str(exc))
    if len(sentences) > 1:
        notes.append(f"Comparing on the first of the {len(sentences)} sentences.")
    rows = [_compare_one(m, sentences[0], beam_size, replace_unk, lexicon) for m in models]
    message = f"Translated with {len(rows)} {catalog.direction_label(direction)} model{'s' * (len(rows) > 1)}."
    return status_html(message, notes), {"ok": True, "error": None, "notes": notes, "sentence": sentences[0],
                                         "direction": direction, "models": rows}


def _compare_one(model: catalog.BundledModel, sentence: str, beam_size, replace_unk, lexicon) -> dict:
    row = {"name": model.name, "attention": model.attention, "bleu": model.bleu, "label": model.label, "error": None}
    try:
        translator = catalog.CACHE.bundled(model)
        options, _ = decode_options(translator, beam_size, 1, replace_unk, lexicon)
        [result] = run_translation(translator, [sentence], options)
        return {**row, **sentence_result(result, translator, compact=True)}
    except (NMTError, InputProblem) as exc:
        return {**row, "error": str(exc)}
    except Exception as exc:
        logger.exception("comparison with %s failed", model.name)
        return {**row, "error": f"Internal error ({type(exc).__name__}: {exc})."}


def model_card(direction: str | None = None, attention: str = "general", hub_id: str = "") -> tuple[str, object]:
    """The selected model's card (Markdown) and its training curves (a Plotly figure, or None without metrics)."""
    try:
        translator, model = choose_model(direction, attention, hub_id)
        card = catalog.card_markdown(catalog.summary(translator, model["name"]))
    except NMTError as exc:
        return f"*No model card:* {html.escape(str(exc), quote=False)}", None
    except Exception as exc:
        logger.exception("model card failed")
        return f"*No model card:* internal error ({html.escape(f'{type(exc).__name__}: {exc}', quote=False)}).", None
    try:
        return card, plots.training_curves_figure(catalog.read_metrics(translator.checkpoint.path))
    except ValueError:  # (no readable epoch)
        return card + "\n\n*No training curves: this checkpoint has no `metrics.jsonl` (or none readable).*", None


def tracked_attention(direction: str | None = None, attention: str = "general", hub_id: str = "",
                      sentence: int = 0) -> tuple[object, list[str]]:
    """The selected model's tracked sentences (``tracked.jsonl``): the attention figure of sentence
    ``sentence`` with its slider over the epochs, and a label per tracked sentence (its source words,
    shortened); (None, []) for a checkpoint without them, or for a model that does not load."""
    try:
        translator, _ = choose_model(direction, attention, hub_id)
        records = read_tracked(translator.checkpoint.path)
        if not records:
            return None, []
        labels = [tracked_label(s["source"]) for s in records[0]["sentences"]]
        sentence = sentence if isinstance(sentence, int) and 0 <= sentence < len(labels) else 0
        return plots.tracked_attention_figure(records, sentence), labels
    except (NMTError, ValueError):  # (a model that does not load, one without attention)
        return None, []
    except Exception:
        logger.exception("the tracked sentences failed")
        return None, []


def tracked_label(source: list[str], limit: int = 60) -> str:
    text = " ".join(source)
    return text if len(text) <= limit else text[:limit - 1] + "…"
