"""HTML and component updates for the look-inside tab, from the /beam_tree, /what_if, /score and
/neighbors results (demo/inside.py)."""

from __future__ import annotations

import html
import math

import gradio as gr

from demo.render import plot_value
from nmt.search.tree import BeamTree, Node
from nmt.serving.alignments import caption
from nmt.serving.inspection import path_tokens
from nmt.tokenization import get_tokenizer

LOW_PROB = 0.1  # a word the model gives less than this is marked as unlikely


def _lang(result: dict | None) -> str:
    return ((result or {}).get("model") or {}).get("tgt_lang", "en")


def _plot(figure: dict | None, label: str):
    return gr.Plot(value=plot_value(figure), visible=figure is not None, label=caption(label, figure))


# ----------------------------------------------------------------------------- words and their probabilities
def prob_chips(scored: dict) -> str:
    """Each word (and </s>) coloured by its probability; the hover lists the words the model preferred."""
    chips = []
    for word, logp, alts in zip(scored["words"], scored["token_log_probs"], scored["alternatives"]):
        prob = math.exp(logp)
        preferred = ", ".join(f"{a['word']} {a['prob']:.0%}" for a in alts[:5])
        tip = html.escape(f"p = {prob:.3f} (log {logp:.2f}); the model's top words here: {preferred}", quote=True)
        kind = "nmt-low" if prob < LOW_PROB else ""
        shade = f"background: rgba(28, 126, 214, {0.08 + 0.45 * prob:.2f})"
        chips.append(f'<span class="nmt-chip {kind}" style="{shade}" title="{tip}">{html.escape(word)}'
                     f'<sub>{prob:.0%}</sub></span>')
    return f'<div class="nmt-chips" dir="auto">{"".join(chips)}</div>'


def render_tree(result: dict | None) -> list:
    """The summary, the tree figure, and the what-if and neighbour word choices from a /beam_tree result."""
    if not result or not result.get("ok"):
        empty = gr.Dropdown(choices=[], value=None)
        return ["", gr.Plot(value=None, visible=False), empty, empty, empty]
    best = result["best"]
    summary = (f'<div class="nmt-card"><div class="nmt-out" dir="auto">{html.escape(result["translation"])}</div>'
               f'<div class="nmt-small">Each word with its probability (hover: the words the model preferred '
               f'there); score {result["score"]:.3f}.</div>{prob_chips(best)}</div>')
    positions = [(f"{i + 1}. {w}", i) for i, w in enumerate(best["words"])]
    return [summary, _plot(result["tree"]["figure"], "Beam search tree"),
            gr.Dropdown(choices=positions, value=None), gr.Dropdown(choices=[], value=None),
            gr.Dropdown(choices=word_choices(result, "target"), value=None)]


def on_position(result: dict | None, position) -> gr.Dropdown:
    """The words the model considered at ``position`` of the best translation, most probable first."""
    if not result or not result.get("ok") or position is None:
        return gr.Dropdown(choices=[], value=None)
    best = result["best"]
    position = int(position)
    chosen = best["words"][position]
    alternatives = [a for a in best["alternatives"][position] if a["word"] != chosen]
    return gr.Dropdown(choices=[(f"{a['word']} ({a['prob']:.1%})", a["word"]) for a in alternatives], value=None)


def on_word(result: dict | None, position, word) -> str:
    """The prefix: the best translation up to ``position``, then ``word``."""
    if not result or not result.get("ok") or position is None or not word:
        return gr.update()
    tokens = result["best"]["tokens"][: int(position)] + [word]
    return get_tokenizer(_lang(result)).detokenize(tokens)


def on_node_click(clicked: str, result: dict | None) -> str:
    """The prefix up to the tree node clicked in the browser (``"node id:time"``, set by the page's script)."""
    if not result or not result.get("ok") or not clicked:
        return gr.update()
    tree = BeamTree("", [], [Node(**n) for n in result["tree"]["nodes"]], result["tree"]["best_path"])
    try:
        tokens = path_tokens(tree, int(str(clicked).split(":")[0]))
    except (ValueError, KeyError):
        return gr.update()
    return get_tokenizer(_lang(result)).detokenize(tokens) if tokens else gr.update()


def word_choices(result: dict | None, side: str) -> list[tuple[str, int]]:
    """The words whose nearest training examples can be looked up: the best translation's or the source's."""
    if not result or not result.get("ok"):
        return []
    words = result["src_tokens"] if side == "source" else result["tokens"]
    return [(f"{i + 1}. {w}", i) for i, w in enumerate(words)]


def on_side(result: dict | None, side: str) -> gr.Dropdown:
    return gr.Dropdown(choices=word_choices(result, side), value=None)


# ----------------------------------------------------------------------------- what if, score, neighbours
def render_what_if(result: dict | None) -> list:
    if not result or not result.get("ok"):
        return ["", gr.Plot(value=None, visible=False), gr.Plot(value=None, visible=False)]
    forced = result["tokens"][: result["forced"]]
    rest = result["tokens"][result["forced"]:]
    lang = get_tokenizer(_lang(result))
    diff = result["difference"]
    text = (f'<div class="nmt-card"><div class="nmt-out" dir="auto"><mark class="nmt-forced">'
            f'{html.escape(lang.detokenize(forced))}</mark> {html.escape(lang.detokenize(rest))}</div>'
            f'<div class="nmt-small">Score {result["score"]:.3f} ({diff:+.3f} against the model\'s own: '
            f'<i>{html.escape(result["original"]["translation"])}</i>, {result["original"]["score"]:.3f}).</div></div>')
    return [text, _plot(result["attention_figure"], "Attention of the new translation"),
            _plot(result["tree"]["figure"], "The search from this beginning")]


def render_score(result: dict | None) -> list:
    if not result or not result.get("ok"):
        return ["", gr.Plot(value=None, visible=False), gr.Plot(value=None, visible=False)]
    kind = {"same": "nmt-same", "search error": "nmt-search-error", "model error": "nmt-model-error"}[result["verdict"]]
    yours, best = result["yours"], result["model_best"]
    text = (f'<div class="nmt-verdict {kind}">{html.escape(result["message"])}</div>'
            f'<div class="nmt-card"><div class="nmt-small"><b>Yours</b> (score {yours["score"]:.3f})</div>'
            f'{prob_chips(yours)}<div class="nmt-small"><b>The model\'s own</b> (score {best["score"]:.3f})</div>'
            f'{prob_chips(best)}</div>')
    return [text, _plot(yours["attention_figure"], "Attention while reading your translation"),
            _plot(best["attention_figure"], "Attention of the model's own translation")]


def render_neighbors(result: dict | None) -> str:
    if not result or not result.get("ok"):
        return ""
    word = f" <b>{html.escape(result['word'])}</b>" if result.get("word") else ""
    rows = []
    for i, n in enumerate(result["neighbors"], 1):
        marked = " ".join(f'<mark class="nmt-match">{html.escape(t)}</mark>' if j == n["position"] else html.escape(t)
                          for j, t in enumerate(n["tokens"]))
        other = n["source"] if result["side"] == "target" else n["target"]
        rows.append(f'<tr><td>{i}</td><td dir="auto">{marked}<div class="nmt-small">{html.escape(other)}</div></td>'
                    f'<td>{n["distance"]:.3f}</td></tr>')
    head = f'<div class="nmt-small">Training examples nearest to{word} ({result["side"]} side):</div>'
    return (f'{head}<table class="nmt-nbest nmt-neighbors"><tr><th>#</th><th>training example (matching word '
            f'marked)</th><th>distance</th></tr>{"".join(rows)}</table>')
