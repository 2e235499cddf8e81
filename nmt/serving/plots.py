"""Plotly figures: a translation's attention heatmap (full size or ``compact`` for a narrow column), the
beam search's tree (``beam_tree_figure``), a model's training curves and the attention of a sentence
tracked during training, epoch by epoch (``tracked_attention_figure``).

All work on plain ``nmt`` objects, so a script or notebook can draw them without the app::

    from nmt import Translator
    from nmt.serving import plots
    [t] = Translator.load("checkpoints/de-en-general").translate(["Ein Hund läuft."])
    plots.attention_figure(t).show()

Figures carry plain lists (not numpy arrays), so their JSON (``fig.to_json()``) is readable by any
client, and an explicit height (an autosized Plotly figure can render at zero height in Gradio).
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nmt.checkpoint import finite_number
from nmt.search.tree import BeamTree, Node
from nmt.serving.translator import Translation

COLORSCALE = "Blues"
ROW_PX, MIN_HEIGHT, MAX_HEIGHT = 26, 300, 900
CURVES_HEIGHT = 340
UNK_COLOR = "#e8590c"
ALIGNMENT_COLOR, LEGEND_PX = "#d6336c", 30  # word-alignment markers (apart from the blues and UNK_COLOR), their legend
COMPACT_FONT, COMPACT_CHAR_PX, COMPACT_TICK_CHARS = 10, 6.5, 8
COMPACT_ROW_PX, COMPACT_CELL_PX, COMPACT_AUTO_WIDTH = 20, 16, 360
COMPACT_MIN_HEIGHT, COMPACT_MAX_HEIGHT = 220, 760
_COMPACT_COLORBAR = {"orientation": "h", "thickness": 8, "len": 0.7, "x": 0.5, "xanchor": "center", "y": -0.02,
                     "yanchor": "top", "tickfont": {"size": 9}, "title": {"text": "weight", "side": "right",
                                                                        "font": {"size": 10}}}
_HOVER = "source: %{customdata[0]}<br>output: %{customdata[1]}<br>weight: %{z:.3f}%{customdata[2]}<extra></extra>"


def attention_height(n_rows: int, n_cols: int = 0) -> int:
    """Pixels for ``n_rows`` output rows, plus room for the (rotated) source labels."""
    return int(min(MAX_HEIGHT, max(MIN_HEIGHT, 140 + ROW_PX * n_rows + 4 * min(n_cols, 20))))


def attention_figure(translation: Translation, title: str | None = None, height: int | None = None,
                     compact: bool = False) -> go.Figure:
    """Heatmap of ``translation.attention``: x = source tokens, y = output tokens (first at the top).

    Cells sit at numeric positions labelled with ``tickvals``/``ticktext``, so a repeated word ("the",
    ".") keeps its own row or column. The colour scale is fixed to [0, 1]; hovering shows both words
    and the weight. Words produced by UNK replacement are outlined on the source word they copy.
    ``compact=True`` fits a narrow column (300-450 px) or a phone: small tick font, vertical source
    labels, long words shortened in the ticks (whole in the hover), a thin horizontal colour bar below,
    tight margins and no axis titles; past about 18 source words it sets a width that keeps every column
    ``COMPACT_CELL_PX`` wide (wrap the plot in a horizontally scrolling container).
    Raises ``ValueError`` for a model without attention (attention ``none``): there is nothing to draw.
    """
    if translation.attention is None:
        raise ValueError("this translation has no attention weights (the model uses attention 'none')")
    src, out = list(translation.src_tokens), list(translation.tokens)
    weights = np.asarray(translation.attention, dtype=float)
    if weights.shape != (len(out), len(src)):
        raise ValueError(f"attention has shape {weights.shape}, expected ({len(out)}, {len(src)}) (output x source)")
    colorbar = _COMPACT_COLORBAR if compact else {"title": {"text": "weight"}, "thickness": 12}
    fig = go.Figure(go.Heatmap(
        z=weights.tolist(), x=list(range(len(src))), y=list(range(len(out))), zmin=0.0, zmax=1.0,
        colorscale=COLORSCALE, colorbar=colorbar,
        customdata=_hover_data(translation), hovertemplate=_HOVER, xgap=1, ygap=1,
    ))
    if compact:
        fig.update_layout(_compact_layout(src, out, title, height))
    else:
        fig.update_layout(
            height=height or attention_height(len(out), len(src)), title={"text": title} if title else None,
            margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10}, plot_bgcolor="white",
            xaxis=_axis(src, "source", side="top", tickangle=-45),
            yaxis=_axis(out, "output", autorange="reversed"),
        )
    fig.update_layout(shapes=_replacement_shapes(translation))
    return fig


def add_alignment_links(fig: go.Figure, links, name: str = "alignment", color: str = ALIGNMENT_COLOR) -> go.Figure:
    """``fig`` (an ``attention_figure``) with a marker on each linked cell: ``links`` are (source position,
    output position) pairs, from 0, as ``nmt.alignment`` reads and writes them (a word aligner's, or the
    attention's own). One trace named ``name``, in the legend, where a click hides or shows it; the
    markers do not catch the mouse, so hovering still shows the heatmap's words and weight."""
    links = sorted(set(links), key=lambda link: (link[1], link[0]))
    heatmap = next((trace for trace in fig.data if trace.type == "heatmap"), None)
    if heatmap is None:
        raise ValueError("the figure has no attention heatmap to mark links on")
    rows, cols = len(heatmap.z), len(heatmap.z[0]) if len(heatmap.z) else 0
    outside = [f"{s}-{t}" for s, t in links if not (0 <= s < cols and 0 <= t < rows)]
    if outside:
        raise ValueError(f"links {' '.join(outside[:5])} are outside the heatmap's {cols} source and {rows} output words")
    fig.add_trace(go.Scatter(
        x=[s for s, _ in links], y=[t for _, t in links], mode="markers", name=name, showlegend=True,
        marker={"symbol": "square-open", "size": 11, "color": color, "line": {"width": 2}}, hoverinfo="skip",
    ))
    legend = {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.01, "yanchor": "top", "font": {"size": 10}}
    if heatmap.colorbar.orientation == "h":  # compact: below the colour bar, in room added at the bottom
        legend.update(yref="container", y=0, yanchor="bottom")
        fig.update_layout(height=fig.layout.height + LEGEND_PX, margin={"b": fig.layout.margin.b + LEGEND_PX})
    fig.update_layout(showlegend=True, legend=legend)  # (else below the plot: the colour bar is at its right)
    return fig


def compact_attention_size(n_rows: int, src: list[str]) -> tuple[int, int | None]:
    """(height, width or None) of a compact heatmap: rows of ``COMPACT_ROW_PX``, room for the vertical
    (shortened) source labels and the colour bar; a width only when the columns would not fit a phone."""
    label_px = COMPACT_CHAR_PX * max((len(short_token(t, COMPACT_TICK_CHARS)) for t in src), default=1)
    height = int(min(COMPACT_MAX_HEIGHT, max(COMPACT_MIN_HEIGHT, 70 + label_px + COMPACT_ROW_PX * n_rows)))
    width = 80 + COMPACT_CELL_PX * len(src)
    return height, (int(width) if width > COMPACT_AUTO_WIDTH else None)


def _compact_layout(src: list[str], out: list[str], title: str | None, height: int | None) -> dict:
    auto_height, width = compact_attention_size(len(out), src)
    font = {"size": COMPACT_FONT}
    src_ticks, out_ticks = ([short_token(t, COMPACT_TICK_CHARS) for t in tokens] for tokens in (src, out))
    return {"height": height or auto_height, "width": width, "plot_bgcolor": "white",
            "title": {"text": title, "font": {"size": 13}} if title else None,
            "margin": {"l": 4, "r": 4, "t": 30 if title else 4, "b": 4},
            "xaxis": _axis(src_ticks, "", side="top", tickangle=-90, tickfont=font),
            "yaxis": _axis(out_ticks, "", autorange="reversed", tickfont=font)}


def short_token(token: str, limit: int) -> str:
    """``token`` cut to ``limit`` characters, the last one an ellipsis when it was longer."""
    return token if len(token) <= limit else token[:max(1, limit - 1)] + "…"


def _axis(tokens: list[str], title: str, **extra) -> dict:
    """A categorical-looking axis over numeric positions: one tick per token, repeats kept apart."""
    return {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [_plain(t) for t in tokens],
            "title": {"text": title}, "showgrid": False, "zeroline": False, "automargin": True, **extra}


def _plain(text: str) -> str:
    """``text`` as Plotly shows it literally: its labels and hovers read a few HTML tags ("</s>" would vanish)."""
    return html.escape(text, quote=False)


def _hover_data(translation: Translation) -> list[list[list[str]]]:
    """Per cell: source word, output word, and a note for output words that UNK replacement produced."""
    notes = {r.position: f"<br>UNK replaced: copied from source word '{_plain(r.source_word)}'"
             for r in translation.replacements}
    return [[[_plain(s), _plain(o), notes.get(i, "")] for s in translation.src_tokens]
            for i, o in enumerate(translation.tokens)]


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



# Attention over training (tracked.jsonl, nmt.serving.tracked): one sentence's heatmap, a slider over the epochs.
# Room above the title for a caption laid over the figure's top left (a Gradio label); the title's lines;
# the source words (vertical, shortened: whole in the hover); below the heatmap, the colour bar and the slider.
TRACKED_CAPTION_PX, TRACKED_TITLE_CHARS, TRACKED_TITLE_LINE_PX, TRACKED_FONT = 50, 44, 17, 11
TRACKED_TICK_CHARS, TRACKED_LABEL_CHARS, TRACKED_CHAR_PX, TRACKED_COLORBAR_PX, TRACKED_SLIDER_PX = 12, 16, 6.6, 44, 56
TRACKED_MAX_STEPS, TRACKED_MAX_CELLS, TRACKED_MAX_LABELS, TRACKED_TITLE_LINES = 200, 300_000, 10, 4


def tracked_attention_figure(records: list[dict], sentence: int = 0, height: int | None = None) -> go.Figure:
    """The attention of tracked sentence ``sentence`` (``nmt.serving.tracked.read_tracked`` records) with a
    slider over the epochs, starting at the last: each step sets the heatmap, the output labels and the
    title ("epoch K: the translation"). As ``attention_figure``: x = source words (at the top), y = output
    words and ``</s>``, colours on [0, 1], both words and the weight in the hover; laid out for a laptop
    and a phone alike (vertical source words, shortened past TRACKED_TICK_CHARS, a thin horizontal colour
    bar, the title wrapped). Rows are those of the longest translation; those an epoch leaves empty are
    blank and unlabelled. Past ``TRACKED_MAX_STEPS`` steps or ``TRACKED_MAX_CELLS`` cells, evenly spaced
    epochs (the first and last among them) are drawn. Raises ``ValueError`` when there is no such
    sentence or it has no attention (a model without attention)."""
    if not records or not 0 <= sentence < len(records[0]["sentences"]):
        raise ValueError(f"there is no tracked sentence {sentence + 1}")
    steps = [(r["epoch"], r["sentences"][sentence]) for r in records]
    if any(s["attention"] is None for _, s in steps):
        raise ValueError("the tracked sentence has no attention weights (the model uses attention 'none')")
    src = list(steps[0][1]["source"])
    n_rows = max(len(s["translation"]) + 1 for _, s in steps)
    steps = [steps[i] for i in _spaced(len(steps), min(TRACKED_MAX_STEPS, TRACKED_MAX_CELLS // (n_rows * len(src))))]
    lines = max(len(_tracked_title(epoch, s["translation"])) for epoch, s in steps)
    views = [_tracked_view(epoch, s, src, n_rows, lines) for epoch, s in steps]
    last = views[-1]
    top = _tracked_top(src, lines)
    bottom = TRACKED_COLORBAR_PX + TRACKED_SLIDER_PX
    height = height or int(min(MAX_HEIGHT + 200, max(MIN_HEIGHT, top + ROW_PX * n_rows + bottom)))
    plot_px = max(1, height - top - bottom)
    left = int(12 + TRACKED_CHAR_PX * max(len(html.unescape(label)) for v in views for label in v["labels"]))
    every = max(1, -(-len(steps) // TRACKED_MAX_LABELS))  # (slider labels: at most about ten, the last always)
    slider = {
        "active": len(steps) - 1, "x": 0, "len": 1, "y": 0, "yanchor": "top",
        "pad": {"t": TRACKED_COLORBAR_PX, "b": 0, "l": 0, "r": 0},
        "currentvalue": {"visible": False}, "font": {"size": 10}, "ticklen": 4,
        "steps": [{"method": "update", "label": str(epoch) if i % every == 0 or i == len(steps) - 1 else "",
                   "value": str(epoch), "args": [{"z": [v["z"]], "customdata": [v["customdata"]]},
                                                 {"yaxis.ticktext": v["labels"], "title.text": v["title"]}]}
                  for i, ((epoch, _), v) in enumerate(zip(steps, views))],
    }
    colorbar = {**_COMPACT_COLORBAR, "len": 0.6, "y": -6 / plot_px}
    fig = go.Figure(go.Heatmap(
        z=last["z"], x=list(range(len(src))), y=list(range(n_rows)), zmin=0.0, zmax=1.0, colorscale=COLORSCALE,
        colorbar=colorbar, customdata=last["customdata"], hovertemplate=_HOVER, hoverongaps=False, xgap=1, ygap=1,
    ))
    font = {"size": TRACKED_FONT}
    fig.update_layout(
        height=height, plot_bgcolor="white",
        title={"text": last["title"], "font": {"size": 12}, "x": 0, "xanchor": "left", "xref": "container",
               "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": TRACKED_CAPTION_PX, "l": 8}},
        margin={"l": left, "r": 8, "t": top, "b": bottom},
        xaxis=_axis([short_token(t, TRACKED_TICK_CHARS) for t in src], "", side="top", tickangle=-90, tickfont=font),
        yaxis={**_axis([""] * n_rows, "", autorange="reversed", tickfont=font), "ticktext": last["labels"],
               "automargin": False},  # (room for the longest label of any epoch: the heatmap keeps its place)
        sliders=[slider],
    )
    return fig


def _tracked_top(src: list[str], lines: int) -> int:
    """The top margin: room for a caption, the title's lines, and the (vertical) source words below them; a
    little more than the words take (``automargin`` adds room if it is short, which only moves the plot
    down), so they never run into the title."""
    label_px = TRACKED_CHAR_PX * max(len(short_token(t, TRACKED_TICK_CHARS)) for t in src) + 8
    return int(TRACKED_CAPTION_PX + 8 + TRACKED_TITLE_LINE_PX * lines + label_px)


def _spaced(n: int, keep: int) -> list[int]:
    """``keep`` (at least 2, or all) evenly spaced indices of ``range(n)``, the first and the last among them."""
    if n <= max(keep, 2):
        return list(range(n))
    keep = max(keep, 2)
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})


def _tracked_title(epoch: int, translation: list[str]) -> list[str]:
    """The title's lines: "epoch K: the translation", wrapped at word ends (a phone's width), at most
    TRACKED_TITLE_LINES (the last then ends in an ellipsis)."""
    lines, line = [], f"epoch {epoch}:"
    for word in translation or ["(empty)"]:
        word = short_token(word, TRACKED_TITLE_CHARS)
        if len(line) + 1 + len(word) > TRACKED_TITLE_CHARS:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}"
    lines.append(line)
    if len(lines) > TRACKED_TITLE_LINES:
        lines = lines[:TRACKED_TITLE_LINES]
        lines[-1] = lines[-1][:TRACKED_TITLE_CHARS - 2] + " …"
    return lines


def _tracked_view(epoch: int, sentence: dict, src: list[str], n_rows: int, lines: int) -> dict:
    """One slider step: z and hover data padded to ``n_rows`` (None: a blank cell), labels, the title."""
    out = [_plain(short_token(t, TRACKED_LABEL_CHARS)) for t in sentence["translation"]] + [_plain("</s>")]
    words = [_plain(t) for t in sentence["translation"]] + [_plain("</s>")]
    pad = n_rows - len(out)
    title = [_plain(line) for line in _tracked_title(epoch, sentence["translation"])]
    title[0] = title[0].replace(f"epoch {epoch}:", f"<b>epoch {epoch}</b>:", 1)
    note = f"<br>epoch {epoch}"
    return {"z": [list(row) for row in sentence["attention"]] + [[None] * len(src)] * pad,
            "customdata": [[[_plain(s), o, note] for s in src] for o in words] + [[["", "", ""]] * len(src)] * pad,
            "labels": out + [""] * pad,
            "title": "<br>".join(["&#8203;"] * (lines - len(title)) + title)}  # (as many lines at every epoch)



# The beam tree. Steps are TREE_STEP_PX apart (the figure's width is set from it), rows TREE_ROW_PX.
TREE_STEP_PX, TREE_ROW_PX, TREE_LABEL_CHARS, TREE_CHAR_PX = 104, 24, 12, 6.6
TREE_MIN_HEIGHT, TREE_MAX_HEIGHT, TREE_MIN_WIDTH, TREE_MAX_WIDTH = 320, 1100, 480, 6000
TREE_MARGIN = {"l": 10, "r": 10, "t": 90, "b": 10}
TREE_COLORSCALE, TREE_BAND_SLACK = "Viridis", 1.2
BEST_COLOR, FORCED_FILL, PRUNED_TEXT, LEGEND_COLOR = "#c2255c", "rgba(250, 176, 5, 0.16)", "#adb5bd", "#3b8a9e"
TREE_STATUSES = ("pruned", "kept", "finished")  # drawing order: pruned at the back
_SYMBOL = {"kept": "circle", "finished": "diamond", "pruned": "circle"}
_TREE_NAMES = {"kept": "kept (goes on)", "finished": "finished (&lt;/s&gt;)", "pruned": "pruned"}
_TREE_HOVER = ("<b>%{customdata[1]}</b>  step %{customdata[2]}, %{customdata[6]}%{customdata[7]}"
               "<br>log p: %{customdata[3]:.3f}<br>cumulative: %{customdata[4]:.3f}"
               "<br>normalised: %{customdata[5]:.3f}<extra></extra>")


def tree_positions(tree: BeamTree) -> dict[int, tuple[int, float]]:
    """(x, y) per node id, x = step. Within a step the nodes keep their parents' order (one parent's
    children together, kept and finished before pruned, best score first), so no two edges cross; each
    sits as near its parent's y as rows one apart allow (a least-squares fit that keeps that order), and
    each step is shifted, if need be, into a band of TREE_BAND_SLACK times the most nodes of a step."""
    by_step: dict[int, list[Node]] = {}
    for node in tree.nodes:
        by_step.setdefault(node.step, []).append(node)
    band = max(len(nodes) for nodes in by_step.values()) * TREE_BAND_SLACK
    y: dict[int, float] = {}
    for step in sorted(by_step):
        families: dict[int | None, list[Node]] = {}
        for node in by_step[step]:
            families.setdefault(node.parent if node.parent in y else None, []).append(node)
        order, ideal = [], []
        for parent in sorted(families, key=lambda p: (-1e9, 0) if p is None else (y[p], p)):
            children = sorted(families[parent], key=lambda n: (n.status == "pruned", -n.score, n.id))
            anchor = 0.0 if parent is None else y[parent]
            order += children
            ideal += [anchor + i - (len(children) - 1) / 2 for i in range(len(children))]
        spread = _spread(ideal)
        shift = -spread[0] if spread[0] < 0 else min(0.0, band - 1 - spread[-1])  # stay in the band
        y.update((node.id, round(v + shift, 4)) for node, v in zip(order, spread))
    return {node.id: (node.step, y[node.id]) for node in tree.nodes}


def _spread(ideal: list[float], gap: float = 1.0) -> list[float]:
    """The positions nearest ``ideal`` (least squares) that keep its order and lie ``gap`` or more apart:
    pool-adjacent-violators on ``ideal[i] - gap * i``."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for i, value in enumerate(ideal):
        blocks.append([value - gap * i, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    pooled = [total / count for total, count in blocks for _ in range(int(count))]
    return [z + gap * i for i, z in enumerate(pooled)]


def tree_size(positions: dict[int, tuple[int, float]]) -> tuple[int, int]:
    """(height, width) in pixels: TREE_ROW_PX per row of the tallest spread, TREE_STEP_PX per step."""
    ys = [y for _, y in positions.values()]
    steps = max(x for x, _ in positions.values()) + 1
    height = TREE_MARGIN["t"] + TREE_MARGIN["b"] + 50 + TREE_ROW_PX * (max(ys) - min(ys) + 1)
    width = TREE_MARGIN["l"] + TREE_MARGIN["r"] + 110 + TREE_STEP_PX * steps
    return (int(min(TREE_MAX_HEIGHT, max(TREE_MIN_HEIGHT, height))),
            int(min(TREE_MAX_WIDTH, max(TREE_MIN_WIDTH, width))))


def beam_tree_figure(tree: BeamTree, height: int | None = None) -> go.Figure:
    """The beam search as a tree, after Seq2Seq-Vis (Strobelt et al. 2018): x = output step, one labelled
    node per candidate, an edge to the hypothesis it extends, colour = cumulative log-probability.
    Finished hypotheses (</s>) are diamonds, pruned candidates small, faded and lightly labelled, the
    winning path (``tree.best_path``) drawn thick with outlined nodes; forced prefix steps are shaded.
    Each node's ``customdata[0]`` is its id (for ``plotly_click``); the hover shows token, log p,
    cumulative and normalised score and status. The figure's width is set (TREE_STEP_PX per step): put
    it in a horizontally scrolling container. Raises ``ValueError`` for a tree without nodes."""
    if not tree.nodes:
        raise ValueError("the beam tree has no nodes: there is nothing to draw")
    positions = tree_positions(tree)
    best = {i for i in tree.best_path if i in positions}
    auto_height, width = tree_size(positions)
    steps = max(n.step for n in tree.nodes) + 1
    x_range = [-0.4, steps - 0.15]
    step_px = (width - TREE_MARGIN["l"] - TREE_MARGIN["r"]) / (x_range[1] - x_range[0])
    fig = go.Figure([*_tree_edges(tree, positions, best, step_px),
                     *(_tree_nodes(tree, status, positions, best) for status in TREE_STATUSES
                       if any(_status(n) == status for n in tree.nodes)), *_tree_legend(tree.forced > 0)])
    ys = [y for _, y in positions.values()]
    fig.update_layout(
        height=height or auto_height, width=width, margin=TREE_MARGIN, plot_bgcolor="white",
        hovermode="closest", clickmode="event", showlegend=True, dragmode=False,  # leaves drags to the page
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "font": {"size": 11}},
        coloraxis={"colorscale": TREE_COLORSCALE, "colorbar": _tree_colorbar(height or auto_height)},
        xaxis={"tickmode": "array", "tickvals": list(range(steps)), "ticktext": _step_labels(tree, steps),
               "range": x_range, "showgrid": True, "gridcolor": "#f1f3f5", "zeroline": False,
               "side": "bottom", "tickfont": {"size": 10}},
        yaxis={"visible": False, "autorange": False, "range": [max(ys) + 0.8, min(ys) - 0.8]},
        shapes=_forced_band(tree),
    )
    return fig


def _status(node: Node) -> str:
    return node.status if node.status in _SYMBOL else "kept"


def _tree_nodes(tree: BeamTree, status: str, positions: dict, best: set[int]) -> go.Scatter:
    """One trace for the nodes of one status; the best path's nodes bigger, outlined and in bold."""
    nodes = sorted((n for n in tree.nodes if _status(n) == status), key=lambda n: n.id in best)  # best on top
    on_best = [n.id in best for n in nodes]
    pruned = status == "pruned"
    text_color = [BEST_COLOR if b else PRUNED_TEXT if pruned else "#212529" for b in on_best]
    return go.Scatter(
        x=[positions[n.id][0] for n in nodes], y=[positions[n.id][1] for n in nodes], name=_TREE_NAMES[status],
        mode="markers+text", text=[_node_label(n, b) for n, b in zip(nodes, on_best)], textposition="middle right",
        textfont={"size": 10 if pruned else 11, "color": text_color}, cliponaxis=False, showlegend=False,
        marker={"symbol": _SYMBOL[status], "size": [15 if b else 6 if pruned else 11 for b in on_best],
                "opacity": 0.35 if pruned else 1.0, "color": [n.score for n in nodes], "coloraxis": "coloraxis",
                "line": {"width": [3 if b else 0.5 for b in on_best],
                         "color": [BEST_COLOR if b else "white" for b in on_best]}},
        customdata=[_node_data(n, tree.forced) for n in nodes], hovertemplate=_TREE_HOVER,
    )


def _tree_legend(forced: bool) -> list[go.Scatter]:
    """Legend entries only (no points): the node traces' own markers take their colours from the scores."""
    styles = [(_TREE_NAMES["kept"], "circle", 10, 1.0, LEGEND_COLOR),
              (_TREE_NAMES["finished"], "diamond", 10, 1.0, LEGEND_COLOR),
              (_TREE_NAMES["pruned"], "circle", 6, 0.35, LEGEND_COLOR)]
    styles += [("forced prefix", "square", 14, 1.0, "#ffe8a3")] * forced
    return [go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                       marker={"symbol": symbol, "size": size, "opacity": opacity, "color": color})
            for name, symbol, size, opacity, color in styles]


def _node_label(node: Node, on_best: bool) -> str:
    label = html.escape(short_token(node.token, TREE_LABEL_CHARS), quote=False)
    return f"<b>{label}</b>" if on_best else label


def _node_data(node: Node, forced: int) -> list:
    """customdata: id, token, step (1-based), log p, cumulative, normalised, status, a forced-prefix note."""
    note = " (forced prefix)" if node.step < forced else ""
    return [node.id, html.escape(node.token, quote=False), node.step + 1, float(node.logp), float(node.score),
            float(node.normalized), node.status, note]


def _tree_edges(tree: BeamTree, positions: dict, best: set[int], step_px: float) -> list[go.Scatter]:
    """Three traces of segments split by None: edges to pruned nodes (faint), to the others, the best path.
    An edge leaves its parent after the parent's label (``step_px`` pixels per step) and ends on the
    child's marker."""
    by_id = {n.id: n for n in tree.nodes}
    groups: dict[str, tuple[list, list]] = {"pruned": ([], []), "kept": ([], []), "best": ([], [])}
    for node in tree.nodes:
        if node.parent not in positions:
            continue
        (px, py), (cx, cy) = positions[node.parent], positions[node.id]
        key = "best" if node.id in best and node.parent in best else "pruned" if node.status == "pruned" else "kept"
        xs, ys = groups[key]
        xs += [px + _label_extent(by_id[node.parent], node.parent in best, step_px), cx, None]
        ys += [py, cy, None]
    style = {"pruned": ("#e9ecef", 0.8, "edges to pruned"), "kept": ("#adb5bd", 1.2, "edges"),
             "best": (BEST_COLOR, 3.5, "best path")}
    return [go.Scatter(x=xs, y=ys, mode="lines", name=style[k][2], hoverinfo="skip", showlegend=k == "best",
                       line={"color": style[k][0], "width": style[k][1]}) for k, (xs, ys) in groups.items()]


def _label_extent(node: Node, on_best: bool, step_px: float) -> float:
    """How far (in steps) a node's marker and label reach to its right."""
    chars = len(short_token(node.token, TREE_LABEL_CHARS))
    return min(0.8, (10 + (TREE_CHAR_PX + on_best * 0.6) * chars) / step_px)


def _step_labels(tree: BeamTree, steps: int) -> list[str]:
    """Tick labels "1", "2", ...; under each, the best path's word at that step (grey)."""
    by_id = {n.id: n for n in tree.nodes}
    words = {by_id[i].step: by_id[i].token for i in tree.best_path if i in by_id}
    return [f"{s + 1}<br><span style='color:#868e96'>{html.escape(short_token(words.get(s, ''), 10), quote=False)}"
            "</span>" for s in range(steps)]


def _tree_colorbar(height: int) -> dict:
    """A short horizontal colour bar at the top left, above the legend (at the left, so that it stays in
    view in a horizontally scrolled container)."""
    plot_h = max(1, height - TREE_MARGIN["t"] - TREE_MARGIN["b"])
    return {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.0 + 40 / plot_h, "yanchor": "bottom",
            "len": 160, "lenmode": "pixels", "thickness": 10, "tickfont": {"size": 9},
            "title": {"text": "cumulative log p", "side": "right", "font": {"size": 10}}}


def _forced_band(tree: BeamTree) -> list[dict]:
    if tree.forced <= 0:
        return []
    return [{"type": "rect", "xref": "x", "yref": "paper", "x0": -0.45, "x1": tree.forced - 0.5, "y0": 0, "y1": 1,
             "fillcolor": FORCED_FILL, "line": {"width": 0}, "layer": "below"}]
