"""Attention demo: translate with the bundled attentional LSTM models (or one from the Hub) and look inside.

    python app.py        # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change it)

Runs unchanged as a Hugging Face Space. Everything shown comes from the ``nmt`` API, ``nmt.serving.catalog``
(bundled checkpoints, model cache, model cards) and ``nmt.serving.plots`` (Plotly figures); this file only checks
the input and wires the page. The documented API endpoint is ``/translate`` (see :func:`translate`);
``/compare`` and ``/model_card`` are public too.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402

from nmt import (CheckpointError, DataError, NMTError, Translation, Translator,  # noqa: E402
                 split_sentences)
from nmt.config import ATTENTION_KINDS  # noqa: E402
from nmt.serving import catalog, plots  # noqa: E402
from nmt.tokenization import get_tokenizer  # noqa: E402

logger = logging.getLogger("nmt.app")

MAX_CHARS = 2000  # characters per request
MAX_SENTENCES = 20  # sentences per request (one heatmap slot each)
MAX_WORDS = 100  # words per sentence
MAX_BEAM = 10
# What one request may cost, whatever a (Hub) checkpoint's own decoding defaults say: output length
# at most 3 x the source + 50 words, batches of 20 sentences, a target vocabulary of 200,000 words
# (one step's scores: 20 sentences x beam 10 x 200,000 floats = 160 MB).
REQUEST_LEN_A, REQUEST_LEN_B, REQUEST_BATCH, MAX_TGT_VOCAB = 3.0, 50, 20, 200_000
CONCURRENCY = 4  # requests translating at once; the others wait in the queue
# int8 decoding on a CPU: the faster engine for one sentence, at the same BLEU up to rounding
# (BENCHMARKS.md). NMT_INT8=0: fp32.
INT8 = os.environ.get("NMT_INT8", "1") != "0"
QUEUE_SIZE = 200
MODELS = catalog.discover()
DEFAULT_DIRECTION = next(iter(catalog.directions(MODELS)), "")
TITLE = "Attentional LSTM translation: look inside"

# Control characters mean nothing to the model (newlines and tabs are kept as spacing); bidi
# embedding/override/isolate controls would only scramble how the text is displayed.
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class InputProblem(ValueError):
    """The request cannot be translated as it is; the message tells the user why."""


# ----------------------------------------------------------------------------- checking the input
def clean_text(text: str) -> tuple[str, list[str]]:
    """``text`` without control characters, and notes on what was removed or looks unusual."""
    removed = [c for c in text if _is_control(c)]
    cleaned = "".join(" " if c == "\t" else c for c in text if not _is_control(c))
    notes = []
    if removed:
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in removed}))
        notes.append(f"Removed {len(removed)} control character{'s' * (len(removed) > 1)} ({codes}) from the input.")
    if any(unicodedata.category(c) == "So" for c in cleaned):
        notes.append("The input contains emoji or symbols: the model never saw them in training, "
                     "so they are unknown words to it.")
    if any(unicodedata.bidirectional(c) in ("R", "AL") for c in cleaned):
        notes.append("The input contains right-to-left script (e.g. Arabic or Hebrew), which this model "
                     "was not trained on: expect unknown words and a poor translation.")
    return cleaned, notes


def _is_control(c: str) -> bool:
    return (unicodedata.category(c) == "Cc" and c not in "\n\t") or ord(c) in _BIDI_CONTROLS


def split_input(text: str | None) -> tuple[list[str], list[str]]:
    """Sentences to translate and notes; raises InputProblem for empty or oversized input."""
    text = text or ""
    if len(text) > MAX_CHARS:
        raise InputProblem(f"The input is {len(text):,} characters long; the limit is {MAX_CHARS:,}. "
                           "Translate it in smaller parts.")
    cleaned, notes = clean_text(text)
    if not cleaned.strip():
        raise InputProblem("Nothing to translate: type or paste a sentence first"
                           + (" (the input held only control characters)." if notes else "."))
    sentences = split_sentences(cleaned)
    if len(sentences) > MAX_SENTENCES:
        raise InputProblem(f"The input has {len(sentences)} sentences; the limit is {MAX_SENTENCES} per request.")
    for number, sentence in enumerate(sentences, 1):
        if len(sentence.split()) > MAX_WORDS:
            raise InputProblem(f"Sentence {number} has {len(sentence.split())} words; the limit is {MAX_WORDS} "
                               "per sentence. Split it into shorter sentences.")
    return sentences, notes


# ----------------------------------------------------------------------------- choosing the model
def choose_model(direction: str | None, attention: str | None, hub_id: str | None) -> tuple[Translator, dict]:
    """The translator asked for (a Hub repo id wins over the bundled selection) and a description of it."""
    if hub_id and hub_id.strip():
        return describe(catalog.CACHE.hub(hub_id), hub_id.strip(), "hub")
    model = _bundled(direction, attention)
    return describe(catalog.CACHE.bundled(model), model.name, "bundled")


def _bundled(direction: str | None, attention: str | None) -> catalog.BundledModel:
    if not MODELS:
        raise CheckpointError(f"No bundled model is available yet ({_shown(catalog.checkpoints_dir())} is empty: "
                              "the models are still being trained). Enter a Hugging Face Hub repo id to use a "
                              "published one.")
    model = catalog.find(MODELS, direction or DEFAULT_DIRECTION, attention or "general")
    if model is None:
        available = ", ".join(m.name for m in MODELS)
        raise CheckpointError(f"No bundled model for direction {direction!r} with attention {attention!r} "
                              f"(bundled: {available}).")
    return model


def describe(translator: Translator, name: str, source: str) -> tuple[Translator, dict]:
    ckpt = translator.checkpoint
    return translator, {"name": name, "source": source, "attention": ckpt.model.cfg.attention,
                        "src_lang": ckpt.src_lang, "tgt_lang": ckpt.tgt_lang, "bleu": catalog.test_bleu(translator)}


def _shown(path: Path) -> str:
    """A path as shown to users: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(catalog.REPO_ROOT))
    except ValueError:
        return str(path)


def decode_options(translator: Translator, beam_size, n_best, replace_unk, lexicon) -> tuple[dict, list[str]]:
    """Keyword arguments for ``Translator.translate`` from the form, and notes on what was adjusted."""
    beam = int(beam_size or 5)
    if not 1 <= beam <= MAX_BEAM:
        raise InputProblem(f"The beam size must be between 1 and {MAX_BEAM} (got {beam}).")
    wanted = int(n_best or 1)
    if wanted < 1:
        raise InputProblem(f"The number of alternatives must be at least 1 (got {wanted}).")
    notes, unk = [], bool(replace_unk)
    if wanted > beam:
        notes.append(f"Showing {beam} alternative{'s' * (beam > 1)}: a beam of {beam} finds no more than that.")
    if unk and not translator.has_attention:
        notes.append("UNK replacement needs attention; this model has none (attention 'none'), so it is off.")
        unk = False
    lexicon_path = _file_path(lexicon)
    if lexicon_path and not unk:
        notes.append("The lexicon is used only with UNK replacement, which is off.")
    if len(translator.checkpoint.tgt_vocab) > MAX_TGT_VOCAB:
        raise InputProblem(f"This model's target vocabulary has {len(translator.checkpoint.tgt_vocab):,} words; "
                           f"this app serves models of up to {MAX_TGT_VOCAB:,}.")
    defaults = translator.defaults
    return {"beam_size": beam, "n_best": min(wanted, beam), "replace_unk": unk,
            "lexicon": lexicon_path if unk and lexicon_path else None,
            "max_len_a": min(defaults.max_len_a, REQUEST_LEN_A), "max_len_b": min(defaults.max_len_b, REQUEST_LEN_B),
            "batch_size": min(defaults.batch_size, REQUEST_BATCH)}, notes


def _file_path(value) -> str | None:
    """The path of an uploaded file (Gradio gives a path string, or a dict from some clients)."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


def run_translation(translator: Translator, sentences: list[str], options: dict) -> list[Translation]:
    """``translator.translate``, with lexicon errors naming the uploaded file instead of its temporary path."""
    try:
        return translator.translate(sentences, int8=INT8 and translator.device.type == "cpu", **options)
    except DataError as exc:
        path = options.get("lexicon")
        message = str(exc).replace(path, f"lexicon {Path(path).name!r}") if path else str(exc)
        raise DataError(message) from None


# ----------------------------------------------------------------------------- results as JSON
def sentence_result(r: Translation, translator: Translator) -> dict:
    """One sentence's translation, n-best list, UNK replacements and attention figure, JSON-ready."""
    vocab = translator.checkpoint.src_vocab.stoi
    figure = json.loads(plots.attention_figure(r).to_json()) if r.attention is not None and r.tokens else None
    return {
        "source": r.source, "src_tokens": r.src_tokens, "translation": r.text, "tokens": r.tokens,
        "score": round(float(r.score), 4),
        "n_best": [{"text": c.text, "score": round(float(c.score), 4)} for c in r.n_best],
        "unk_replacements": [{"position": x.position, "source_position": x.source_position,
                              "source_word": x.source_word, "word": x.word} for x in r.replacements],
        "unknown_source_words": list(dict.fromkeys(t for t in r.src_tokens if t not in vocab)),
        "attention_figure": figure,
        "attention_note": None if figure else _no_attention_note(translator),
    }


def _no_attention_note(translator: Translator) -> str:
    if not translator.has_attention:
        return "This model has no attention (attention 'none'): there is no heatmap to show."
    return "The translation is empty: there is no attention to show."


def failure(message: str, notes: list[str] | None = None) -> tuple[str, dict]:
    return status_html(message, notes or [], error=True), {"ok": False, "error": message, "notes": notes or [],
                                                            "sentences": []}


def status_html(message: str, notes: list[str], error: bool = False) -> str:
    kind, icon = ("nmt-error", "⚠️ ") if error else ("nmt-ok", "")
    head = f'<div class="nmt-status {kind}">{icon}{html.escape(message, quote=False)}</div>'
    return head + "".join(f'<div class="nmt-note">ℹ️ {html.escape(n, quote=False)}</div>' for n in notes)


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
            "translation", "tokens", "score", "n_best": [{"text", "score"}], "unk_replacements": [{"position",
            "source_position", "source_word", "word"}], "unknown_source_words", "attention_figure" (Plotly
            figure JSON, or null), "attention_note"}]}.
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
    """Translate the first sentence of ``text`` with every bundled model of ``direction``.

    Returns an HTML status and {"ok", "error", "notes", "sentence", "direction", "models": [{"name",
    "attention", "bleu", "error", ...the fields of one /translate sentence}]}.
    """
    try:
        sentences, notes = split_input(text)
        direction = direction or DEFAULT_DIRECTION
        models = [m for m in MODELS if m.direction == direction]
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
        return {**row, **sentence_result(result, translator)}
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


# ----------------------------------------------------------------------------- rendering results
def sentence_html(row: dict, number: int, tgt_lang: str) -> str:
    """A sentence's card: source, translation (UNK replacements marked), unknown words, n-best table."""
    source = f'<span class="nmt-tag">{number}</span><span dir="auto">{html.escape(row["source"])}</span>'
    parts = [f'<div class="nmt-src">{source}</div>',
             f'<div class="nmt-out" dir="auto">{marked_translation(row, tgt_lang)}</div>']
    if row["unk_replacements"]:
        marks = ", ".join(f'<mark class="nmt-unk">{html.escape(x["word"])}</mark> ← source word '
                          f'<b>{html.escape(x["source_word"])}</b>' for x in row["unk_replacements"])
        parts.append(f'<div class="nmt-small">UNK replacement: {marks}</div>')
    if row["unknown_source_words"]:
        words = " ".join(f"<code>{html.escape(w)}</code>" for w in row["unknown_source_words"])
        parts.append(f'<div class="nmt-small">Unknown to the model: {words}</div>')
    if len(row["n_best"]) > 1:
        parts.append(nbest_table(row["n_best"]))
    if row["attention_note"]:
        parts.append(f'<div class="nmt-noattn">{html.escape(row["attention_note"])}</div>')
    return f'<div class="nmt-card">{"".join(parts)}</div>'


def marked_translation(row: dict, tgt_lang: str) -> str:
    """The detokenized translation as HTML, each UNK-replaced word marked with the source word it came from."""
    marks = {x["position"]: x for x in row["unk_replacements"]}
    if not marks:
        return html.escape(row["translation"])
    placeholders = {i: f"NMTUNKMARK{i}X" for i in marks}
    tokens = [placeholders.get(i, tok) for i, tok in enumerate(row["tokens"])]
    text = html.escape(get_tokenizer(tgt_lang).detokenize(tokens))
    for i, placeholder in placeholders.items():
        x = marks[i]
        tip = html.escape(f"<unk> replaced by the most attended source word {x['source_word']!r}", quote=True)
        text = text.replace(placeholder, f'<mark class="nmt-unk" title="{tip}">{html.escape(x["word"])}'
                                         f'<sub>←{html.escape(x["source_word"])}</sub></mark>')
    return text


def nbest_table(candidates: list[dict]) -> str:
    rows = "".join(f'<tr><td>{i}</td><td dir="auto">{html.escape(c["text"])}</td><td>{c["score"]:.3f}</td></tr>'
                   for i, c in enumerate(candidates, 1))
    return f'<table class="nmt-nbest"><tr><th>#</th><th>n-best alternative</th><th>score</th></tr>{rows}</table>'


def plot_value(figure: dict | None):
    """A Plotly figure JSON (from the API result) for a gr.Plot, without rebuilding the figure."""
    return PlotData(type="plotly", plot=json.dumps(figure)) if figure else None


def render_translation(result: dict | None) -> list:
    """Updates for the sentence slots (visibility, card, heatmap) from a /translate result."""
    rows = (result or {}).get("sentences") or []
    tgt_lang = ((result or {}).get("model") or {}).get("tgt_lang", "en")
    updates = []
    for i in range(MAX_SENTENCES):
        row = rows[i] if i < len(rows) else None
        figure = row["attention_figure"] if row else None
        updates += [gr.Column(visible=row is not None),
                    sentence_html(row, i + 1, tgt_lang) if row else "",
                    gr.Plot(value=plot_value(figure), visible=figure is not None,
                            label=f"Attention, sentence {i + 1}")]
    return updates


def render_comparison(result: dict | None) -> list:
    """Updates for the side-by-side slots (one per attention kind) from a /compare result, then the tab."""
    rows = {r["attention"]: r for r in (result or {}).get("models") or []}
    tgt_lang = ((result or {}).get("direction") or "de-en").partition("-")[2]
    updates = []
    for kind in ATTENTION_KINDS:
        row = rows.get(kind)
        figure = row.get("attention_figure") if row else None
        updates += [gr.Column(visible=row is not None), comparison_html(row, tgt_lang) if row else "",
                    gr.Plot(value=plot_value(figure), visible=figure is not None, label=f"{kind} attention")]
    return updates + [gr.Tabs(selected="compare") if rows else gr.update()]


def comparison_html(row: dict, tgt_lang: str) -> str:
    bleu = f"BLEU {row['bleu']:.2f}" if row["bleu"] is not None else "BLEU not measured"
    head = f'<div class="nmt-model">{html.escape(row["name"])}<span>{bleu}</span></div>'
    if row["error"]:
        error = f'<div class="nmt-status nmt-error">⚠️ {html.escape(row["error"])}</div>'
        return f'<div class="nmt-card">{head}{error}</div>'
    body = f'<div class="nmt-out" dir="auto">{marked_translation(row, tgt_lang)}</div>'
    note = f'<div class="nmt-noattn">{html.escape(row["attention_note"])}</div>' if row["attention_note"] else ""
    return f'<div class="nmt-card">{head}{body}{note}</div>'


# ----------------------------------------------------------------------------- page controls
def attention_choices(direction: str | None) -> list[tuple[str, str]]:
    """Radio choices: every attention kind, labelled with its test BLEU (or as not bundled)."""
    labels = []
    for kind in ATTENTION_KINDS:
        model = catalog.find(MODELS, direction or "", kind)
        labels.append((model.label if model else f"{kind} · not bundled", kind))
    return labels


def default_attention(direction: str | None, current: str | None = None) -> str:
    kinds = [m.attention for m in MODELS if m.direction == direction]
    return next((k for k in (current, "general", *kinds) if k in kinds), "general")


def on_direction(direction: str, attention: str) -> tuple:
    """New direction: relabel the attention choices, keep the kind if bundled, and switch the examples."""
    examples = catalog.validation_examples(direction.partition("-")[0] if direction else "de")
    return (gr.Radio(choices=attention_choices(direction), value=default_attention(direction, attention)),
            gr.Dataset(samples=[[s] for s in examples]))


def banner() -> str:
    if MODELS:
        names = ", ".join(f"{m.name} ({m.label.split(' · ')[1]})" for m in MODELS)
        return f"Bundled models: {names}."
    return (f"⚠️ **No bundled model yet**: `{_shown(catalog.checkpoints_dir())}` holds no checkpoint (the models "
            "are still being trained). Type a Hugging Face Hub repo id (`user/name` or `user/name@revision`) under "
            "*Model* to translate with a published checkpoint.")


CSS = """
.nmt-card {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 12px;
           margin-bottom: 4px}
.nmt-src {color: var(--body-text-color-subdued); margin-bottom: 4px}
.nmt-tag {display: inline-block; min-width: 1.6em; font-weight: 600; margin-right: 6px}
.nmt-out {font-size: 1.15em; font-weight: 600; margin-bottom: 4px}
.nmt-small {font-size: 0.9em; margin: 2px 0}
.nmt-unk {background: #ffd8a8; color: #000; border-radius: 3px; padding: 0 3px}
.nmt-unk sub {font-size: 0.7em; color: #b35900; margin-left: 2px}
.nmt-nbest {border-collapse: collapse; margin-top: 6px; font-size: 0.9em}
.nmt-nbest td, .nmt-nbest th {border-bottom: 1px solid var(--border-color-primary); padding: 2px 8px;
                              text-align: left}
.nmt-noattn {font-style: italic; color: var(--body-text-color-subdued); margin-top: 4px}
.nmt-status {font-weight: 600; padding: 4px 0}
.nmt-error {color: #c92a2a}
.nmt-note {font-size: 0.9em; color: var(--body-text-color-subdued)}
.nmt-model {font-weight: 600; margin-bottom: 4px}
.nmt-model span {font-weight: 400; margin-left: 8px; color: var(--body-text-color-subdued)}
"""


# ----------------------------------------------------------------------------- the page
def build_demo() -> gr.Blocks:
    """The Blocks app: model and settings on the left, input and results on the right."""
    direction0 = DEFAULT_DIRECTION or None
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nTranslate with attentional LSTM encoder-decoders (Luong et al. 2015) trained on "
                    "Multi30k and see, for every output word, which source words the model attended to.")
        gr.Markdown(banner(), elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                direction, attention, hub_id = model_controls(direction0)
                beam, n_best, unk, lexicon = setting_controls()
            with gr.Column(scale=3):
                text = gr.Textbox(label="Text to translate", lines=4, elem_id="input-text",
                                  placeholder=f"One or more sentences (up to {MAX_CHARS:,} characters, "
                                              f"{MAX_SENTENCES} sentences).")
                samples = catalog.validation_examples(direction0.partition("-")[0] if direction0 else "de")
                examples = gr.Dataset(components=[text], samples=[[s] for s in samples], elem_id="examples",
                                      label="Examples from the validation data")
                with gr.Row():
                    go_button = gr.Button("Translate", variant="primary", elem_id="translate-button")
                    compare_button = gr.Button("Compare attention types", elem_id="compare-button")
                status = gr.HTML(label="status", elem_id="status")
        with gr.Tabs(selected="translation") as tabs:
            with gr.Tab("Translation", id="translation"):
                slots = sentence_slots()
                with gr.Accordion("Result as JSON (what the /translate API returns)", open=False):
                    result = gr.JSON(label="result")
            with gr.Tab("Compare attention types", id="compare"):
                compare_status = gr.HTML(label="status")
                compare_slots = comparison_slots()
                compare_result = gr.JSON(label="result", visible=False)
            with gr.Tab("Model card", id="card"):
                card = gr.Markdown(label="model card", elem_id="model-card")
                curves = gr.Plot(label="Training curves", visible=False, elem_id="training-curves")

        wire(SimpleNamespace(**locals()))
    return demo


def model_controls(direction0: str | None) -> tuple:
    with gr.Group():
        choices = [(catalog.direction_label(d), d) for d in catalog.directions(MODELS)]
        direction = gr.Dropdown(choices, value=direction0, label="Model: language direction",
                                allow_custom_value=True, elem_id="direction")
        attention = gr.Radio(attention_choices(direction0), value=default_attention(direction0),
                             label="Attention type (test BLEU)", elem_id="attention")
        hub_id = gr.Textbox("", label="…or a Hugging Face Hub model", placeholder="user/name or user/name@revision",
                            info="Overrides the bundled choice when filled.", elem_id="hub-id")
    return direction, attention, hub_id


def setting_controls() -> tuple:
    with gr.Group():
        beam = gr.Slider(1, MAX_BEAM, value=5, step=1, label="Beam size", elem_id="beam-size")
        n_best = gr.Slider(1, MAX_BEAM, value=3, step=1, label="n-best alternatives shown", elem_id="n-best")
        unk = gr.Checkbox(value=True, label="UNK replacement (copy the most attended source word)",
                          elem_id="replace-unk")
        lexicon = gr.File(label="Lexicon for UNK replacement (optional, 'source ||| target' lines)",
                          file_count="single", type="filepath", elem_id="lexicon")
    return beam, n_best, unk, lexicon


def sentence_slots() -> list:
    """A fixed number of hidden slots (card + heatmap), one per possible sentence."""
    components = []
    for i in range(MAX_SENTENCES):
        with gr.Column(visible=False, elem_id=f"slot-{i}") as column:
            card = gr.HTML()
            plot = gr.Plot(label=f"Attention, sentence {i + 1}", visible=False, elem_id=f"heatmap-{i}")
        components += [column, card, plot]
    return components


def comparison_slots() -> list:
    components = []
    with gr.Row(equal_height=False):
        for kind in ATTENTION_KINDS:
            with gr.Column(visible=False, min_width=220, elem_id=f"compare-{kind}") as column:
                card = gr.HTML()
                plot = gr.Plot(label=f"{kind} attention", visible=False, elem_id=f"compare-heatmap-{kind}")
            components += [column, card, plot]
    return components


def wire(c: SimpleNamespace) -> None:
    """Connect the events; only /translate, /compare and /model_card are public API endpoints."""
    form = [c.text, c.direction, c.attention, c.hub_id, c.beam, c.n_best, c.unk, c.lexicon]
    private = {"api_visibility": "private"}
    limits = {"concurrency_limit": CONCURRENCY, "concurrency_id": "translate"}
    c.go_button.click(translate, form, [c.status, c.result], api_name="translate", **limits).then(
        render_translation, c.result, c.slots, **private).then(
        lambda: gr.Tabs(selected="translation"), None, c.tabs, **private)
    c.compare_button.click(compare, [c.text, c.direction, c.beam, c.unk, c.lexicon],
                           [c.compare_status, c.compare_result], api_name="compare", **limits).then(
        render_comparison, c.compare_result, [*c.compare_slots, c.tabs], **private)
    card_inputs, card_outputs = [c.direction, c.attention, c.hub_id], [c.card, c.curves]
    show_curves = {"fn": lambda figure: gr.Plot(visible=figure is not None), "inputs": c.curves,
                   "outputs": c.curves, **private}
    c.demo.load(model_card, card_inputs, card_outputs, api_name="model_card").then(**show_curves)
    for event in (c.attention.change, c.hub_id.submit, c.hub_id.blur):
        event(model_card, card_inputs, card_outputs, **private).then(**show_curves)
    c.direction.change(on_direction, [c.direction, c.attention], [c.attention, c.examples], **private).then(
        model_card, card_inputs, card_outputs, **private).then(**show_curves)
    c.examples.click(lambda sample: sample[0], c.examples, c.text, **private)


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nmt").setLevel(logging.INFO)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY).launch(
        share=False, max_file_size="5mb", theme=gr.themes.Soft(), css=CSS)
