"""Plotly figures: a translation's attention heatmap and a model's training curves.

Both work on plain ``nmt`` objects, so a script or notebook can draw them without the app::

    from nmt import Translator
    from nmt.serving import plots
    [t] = Translator.load("checkpoints/de-en-general").translate(["Ein Hund läuft."])
    plots.attention_figure(t).show()

Figures carry plain lists (not numpy arrays), so their JSON (``fig.to_json()``) is readable by any
client, and an explicit height (an autosized Plotly figure can render at zero height in Gradio).
"""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nmt.checkpoint import finite_number
from nmt.serving.translator import Translation

COLORSCALE = "Blues"
ROW_PX, MIN_HEIGHT, MAX_HEIGHT = 26, 300, 900
CURVES_HEIGHT = 340
UNK_COLOR = "#e8590c"
_HOVER = "source: %{customdata[0]}<br>output: %{customdata[1]}<br>weight: %{z:.3f}%{customdata[2]}<extra></extra>"


def attention_height(n_rows: int, n_cols: int = 0) -> int:
    """Pixels for ``n_rows`` output rows, plus room for the (rotated) source labels."""
    return int(min(MAX_HEIGHT, max(MIN_HEIGHT, 140 + ROW_PX * n_rows + 4 * min(n_cols, 20))))


def attention_figure(translation: Translation, title: str | None = None, height: int | None = None) -> go.Figure:
    """Heatmap of ``translation.attention``: x = source tokens, y = output tokens (first at the top).

    Cells sit at numeric positions labelled with ``tickvals``/``ticktext``, so a repeated word ("the",
    ".") keeps its own row or column. The colour scale is fixed to [0, 1]; hovering shows both words
    and the weight. Words produced by UNK replacement are outlined on the source word they copy.
    Raises ``ValueError`` for a model without attention (attention ``none``): there is nothing to draw.
    """
    if translation.attention is None:
        raise ValueError("this translation has no attention weights (the model uses attention 'none')")
    src, out = list(translation.src_tokens), list(translation.tokens)
    weights = np.asarray(translation.attention, dtype=float)
    if weights.shape != (len(out), len(src)):
        raise ValueError(f"attention has shape {weights.shape}, expected ({len(out)}, {len(src)}) (output x source)")
    fig = go.Figure(go.Heatmap(
        z=weights.tolist(), x=list(range(len(src))), y=list(range(len(out))), zmin=0.0, zmax=1.0,
        colorscale=COLORSCALE, colorbar={"title": {"text": "weight"}, "thickness": 12},
        customdata=_hover_data(translation), hovertemplate=_HOVER, xgap=1, ygap=1,
    ))
    fig.update_layout(
        height=height or attention_height(len(out), len(src)), title={"text": title} if title else None,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10}, plot_bgcolor="white",
        xaxis=_axis(src, "source", side="top", tickangle=-45),
        yaxis=_axis(out, "output", autorange="reversed"),
        shapes=_replacement_shapes(translation),
    )
    return fig


def _axis(tokens: list[str], title: str, **extra) -> dict:
    """A categorical-looking axis over numeric positions: one tick per token, repeats kept apart."""
    return {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": tokens,
            "title": {"text": title}, "showgrid": False, "zeroline": False, "automargin": True, **extra}


def _hover_data(translation: Translation) -> list[list[list[str]]]:
    """Per cell: source word, output word, and a note for output words that UNK replacement produced."""
    notes = {r.position: f"<br>UNK replaced: copied from source word '{r.source_word}'"
             for r in translation.replacements}
    return [[[s, o, notes.get(i, "")] for s in translation.src_tokens] for i, o in enumerate(translation.tokens)]


def _replacement_shapes(translation: Translation) -> list[dict]:
    """An outline around each cell (output word, source word) that UNK replacement used."""
    return [{"type": "rect", "xref": "x", "yref": "y", "x0": r.source_position - 0.5, "x1": r.source_position + 0.5,
             "y0": r.position - 0.5, "y1": r.position + 0.5, "line": {"color": UNK_COLOR, "width": 3}}
            for r in translation.replacements]


def training_curves_figure(metrics: list[dict], title: str | None = None, height: int = CURVES_HEIGHT) -> go.Figure:
    """Line charts per epoch from ``metrics.jsonl`` records: training loss, train/validation perplexity
    (log scale) and, when recorded, validation BLEU. Raises ``ValueError`` when there is no epoch to draw."""
    rows = sorted((m for m in metrics if isinstance(m, dict) and finite_number(m.get("epoch")) is not None),
                  key=lambda m: m["epoch"])
    if not rows:
        raise ValueError("no training metrics to draw (metrics.jsonl is missing or empty)")
    has_bleu = any(finite_number(m.get("valid_bleu")) is not None for m in rows)
    panels = ["Training loss", "Perplexity"] + (["Validation BLEU"] if has_bleu else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.08)
    epochs = [m["epoch"] for m in rows]
    _line(fig, epochs, rows, "train_loss", "train loss", 1, "#1c7ed6")
    _line(fig, epochs, rows, "train_ppl", "train perplexity", 2, "#1c7ed6")
    _line(fig, epochs, rows, "valid_ppl", "validation perplexity", 2, "#e8590c")
    if has_bleu:
        _line(fig, epochs, rows, "valid_bleu", "validation BLEU", 3, "#2f9e44")
    fig.update_xaxes(title_text="epoch", dtick=1 if len(epochs) <= 20 else None)
    fig.update_yaxes(type="log", col=2)
    fig.update_layout(height=height, title={"text": title} if title else None, hovermode="x unified",
                      margin={"l": 10, "r": 10, "t": 60 if title else 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _line(fig: go.Figure, epochs: list, rows: list[dict], key: str, name: str, col: int, color: str) -> None:
    values = [finite_number(m.get(key)) for m in rows]
    if any(v is not None for v in values):
        fig.add_trace(go.Scatter(x=epochs, y=values, name=name, mode="lines+markers", line={"color": color},
                                 connectgaps=False), row=1, col=col)


