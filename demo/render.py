"""HTML and component updates from the endpoints' JSON results."""

from __future__ import annotations

import html
import json

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData

from demo.checks import MAX_SENTENCES
from nmt import Translation
from nmt.config import ATTENTION_KINDS
from nmt.serving import alignments, plots
from nmt.serving.unk import Replacement
from nmt.tokenization import get_tokenizer


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
        parts.append(nbest_table(row["n_best"], tgt_lang))
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


def nbest_table(candidates: list[dict], tgt_lang: str) -> str:
    """The n-best list, each candidate with its own UNK replacements marked."""
    rows = "".join(f'<tr><td>{i}</td><td dir="auto">{marked_translation(_as_row(c), tgt_lang)}</td>'
                   f'<td>{c["score"]:.3f}</td></tr>' for i, c in enumerate(candidates, 1))
    return f'<table class="nmt-nbest"><tr><th>#</th><th>n-best alternative</th><th>score</th></tr>{rows}</table>'


def _as_row(candidate: dict) -> dict:
    return {"translation": candidate["text"], "tokens": candidate.get("tokens", []),
            "unk_replacements": candidate.get("unk_replacements", [])}


def candidate_figure(row: dict, rank: int, langs: tuple[str, str] | None = None) -> dict | None:
    """The attention heatmap (Plotly JSON) of the n-best candidate ``rank`` (0: the best) of a /translate sentence,
    with a word aligner's links where ``langs`` (source, target language) are given and the pair is known."""
    if rank == 0 or rank >= len(row["n_best"]):
        return row["attention_figure"]
    c = row["n_best"][rank]
    if c.get("attention") is None or not c["tokens"]:
        return None
    marks = [Replacement(**x) for x in c["unk_replacements"]]
    translation = Translation(row["source"], row["src_tokens"], c["text"], c["tokens"], c["score"],
                              attention=np.asarray(c["attention"]), replacements=marks)
    fig = plots.attention_figure(translation, title=f"Alternative {rank + 1}")
    if langs:
        alignments.mark_known_links(fig, *langs, row["src_tokens"], c["tokens"])
    return json.loads(fig.to_json())


def pick_candidate(slot: int):
    """The event handler of slot ``slot``'s candidate choice: that candidate's heatmap."""
    def show(rank, result: dict | None):
        rows = (result or {}).get("sentences") or []
        if slot >= len(rows) or rank is None:
            return gr.update()
        model = (result or {}).get("model") or {}
        figure = candidate_figure(rows[slot], int(rank) - 1, (model.get("src_lang", ""), model.get("tgt_lang", "")))
        return gr.Plot(value=plot_value(figure), visible=figure is not None,
                       label=alignments.caption(f"Attention, sentence {slot + 1}", figure))
    return show


def plot_value(figure: dict | None):
    """A Plotly figure JSON (from the API result) for a gr.Plot, without rebuilding the figure."""
    return PlotData(type="plotly", plot=json.dumps(figure)) if figure else None


def render_translation(result: dict | None) -> list:
    """Updates for the sentence slots (visibility, card, candidate choice, heatmap) from a /translate result."""
    rows = (result or {}).get("sentences") or []
    tgt_lang = ((result or {}).get("model") or {}).get("tgt_lang", "en")
    updates = []
    for i in range(MAX_SENTENCES):
        row = rows[i] if i < len(rows) else None
        figure = row["attention_figure"] if row else None
        n = len(row["n_best"]) if row else 0
        updates += [gr.Column(visible=row is not None),
                    sentence_html(row, i + 1, tgt_lang) if row else "",
                    gr.Radio(choices=[(f"#{r}", r) for r in range(1, n + 1)], value=1, visible=n > 1 and figure is not None),
                    gr.Plot(value=plot_value(figure), visible=figure is not None,
                            label=alignments.caption(f"Attention, sentence {i + 1}", figure))]
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
                    gr.Plot(value=plot_value(figure), visible=figure is not None,
                            label=alignments.caption(f"{kind} attention", figure))]
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
