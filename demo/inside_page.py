"""The look-inside tab: its layout, its events, and the script that turns a click on a beam-tree
node into a "what if" (Gradio's Plot has no click event: the script hands the clicked node's id to a
hidden textbox, whose change event does the rest)."""

from __future__ import annotations

import gradio as gr

from demo.checks import CONCURRENCY
from demo.inside import beam_tree, neighbors, score, what_if
from demo.inside_view import (
    on_node_click,
    on_position,
    on_side,
    on_word,
    render_neighbors,
    render_score,
    render_tree,
    render_what_if,
)

CSS = """
.nmt-hidden {display: none !important}
#beam-tree, #whatif-tree, [id^="compare-heatmap-"] {overflow-x: auto !important}  /* wide figures scroll */
.nmt-chips {line-height: 2.1em; margin: 4px 0}
.nmt-chip {border-radius: 4px; padding: 1px 4px; margin-right: 3px; white-space: nowrap}
.nmt-chip {color: var(--body-text-color)}
.nmt-chip sub {font-size: 0.7em; margin-left: 2px; opacity: 0.8}
.nmt-chip.nmt-low {outline: 2px solid #e8590c}
.nmt-forced {background: #d3f9d8; color: #000; border-radius: 3px; padding: 0 3px}
.nmt-match {background: #ffec99; color: #000; border-radius: 3px; padding: 0 2px}
.nmt-verdict {font-weight: 600; padding: 6px 10px; border-radius: 6px; margin: 4px 0}
.nmt-same {background: #e7f5ff}
.nmt-search-error {background: #fff3bf}
.nmt-model-error {background: #ffe3e3}
"""
# Run once when the page loads: every beam-tree plot (drawn again at each result) gets a click listener
# that writes "node id:time" into the hidden #clicked-node textbox (an input event: Gradio's change follows).
JS = """
() => {
  const hook = () => {
    document.querySelectorAll('#beam-tree .js-plotly-plot, #whatif-tree .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.nmtHooked || typeof plot.on !== 'function') return;
      plot.dataset.nmtHooked = '1';
      plot.on('plotly_click', (event) => {
        const point = event && event.points && event.points[0];
        if (!point || point.customdata === undefined || point.customdata === null) return;
        const id = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
        const box = document.querySelector('#clicked-node textarea, #clicked-node input');
        if (!box || id === undefined || id === null) return;
        box.value = String(id) + ':' + Date.now();
        box.dispatchEvent(new Event('input', {bubbles: true}));
      });
    });
  };
  new MutationObserver(hook).observe(document.body, {childList: true, subtree: true});
  hook();
}
"""


def inside_tab() -> dict:
    """The tab's components, by name."""
    c = {}
    with gr.Row():
        c["sentence"] = gr.Textbox(label="Sentence to look inside", lines=1, scale=4, elem_id="inside-sentence",
                                   placeholder="One source sentence (the Look inside button copies the first "
                                               "sentence of the text above).")
        c["tree_button"] = gr.Button("Show the search", variant="primary", scale=1, min_width=140,
                                     elem_id="tree-button")
    c["status"] = gr.HTML(elem_id="inside-status")
    c["summary"] = gr.HTML(elem_id="inside-summary")
    c["tree_plot"] = gr.Plot(label="Beam search tree", visible=False, elem_id="beam-tree")
    c["clicked"] = gr.Textbox(elem_id="clicked-node", show_label=False, container=False, elem_classes=["nmt-hidden"])
    c["tree_result"] = gr.JSON(visible=False)
    with gr.Accordion("What if… the translation began differently?", open=True, elem_id="what-if"):
        gr.Markdown("Click a word in the tree, or pick a position and one of the words the model considered "
                    "there, or type a beginning; the model then translates on from it.")
        with gr.Row():
            c["position"] = gr.Dropdown(label="Change the word at", choices=[], elem_id="whatif-position")
            c["word"] = gr.Dropdown(label="to a word the model considered", choices=[], elem_id="whatif-word")
        c["prefix"] = gr.Textbox(label="The beginning of the translation", elem_id="whatif-prefix")
        c["whatif_button"] = gr.Button("Translate from this beginning", elem_id="whatif-button")
        c["whatif_status"] = gr.HTML(elem_id="whatif-status")
        c["whatif_html"] = gr.HTML(elem_id="whatif-result")
        c["whatif_plot"] = gr.Plot(visible=False, elem_id="whatif-heatmap")
        c["whatif_tree"] = gr.Plot(visible=False, elem_id="whatif-tree")
        c["whatif_result"] = gr.JSON(visible=False)
    with gr.Accordion("Score your own translation", open=True, elem_id="score"):
        c["yours"] = gr.Textbox(label="Your translation", elem_id="score-input")
        c["score_button"] = gr.Button("Score it", elem_id="score-button")
        c["score_status"] = gr.HTML(elem_id="score-status")
        c["score_html"] = gr.HTML(elem_id="score-result")
        with gr.Row(equal_height=False):
            c["score_plot"] = gr.Plot(visible=False, min_width=300, elem_id="score-heatmap")
            c["model_plot"] = gr.Plot(visible=False, min_width=300, elem_id="score-model-heatmap")
        c["score_result"] = gr.JSON(visible=False)
    with gr.Accordion("Nearest training examples", open=True, elem_id="nearest"):
        with gr.Row():
            c["side"] = gr.Radio([("an output word", "target"), ("a source word", "source")], value="target",
                                 label="Look up", elem_id="nn-side")
            c["nn_word"] = gr.Dropdown(label="Word", choices=[], allow_custom_value=True, elem_id="nn-word")
            c["k"] = gr.Slider(1, 20, value=10, step=1, label="Examples", elem_id="nn-k")
        c["nn_translation"] = gr.Textbox(label="Translation whose words are looked up (empty: the model's own)",
                                         elem_id="nn-translation")
        c["nn_button"] = gr.Button("Find the nearest training examples", elem_id="nn-button")
        c["nn_status"] = gr.HTML(elem_id="nn-status")
        c["nn_html"] = gr.HTML(elem_id="nn-result")
        c["nn_result"] = gr.JSON(visible=False)
    return c


def wire_inside(c: dict, model: list, beam, unk) -> tuple[dict, dict]:
    """The tab's events; ``model``: the direction, attention and Hub id components; the four endpoints are public.
    Returns the two steps of showing the tree (search, then draw), for other buttons to chain."""
    private = {"api_visibility": "private"}
    limits = {"concurrency_limit": CONCURRENCY, "concurrency_id": "translate"}
    run_tree = {"fn": beam_tree, "inputs": [c["sentence"], *model, beam], "outputs": [c["status"], c["tree_result"]],
                **limits}
    show_tree = {"fn": render_tree, "inputs": c["tree_result"],
                 "outputs": [c["summary"], c["tree_plot"], c["position"], c["word"], c["nn_word"]], **private}
    c["tree_button"].click(**run_tree, api_name="beam_tree").then(**show_tree)
    c["position"].change(on_position, [c["tree_result"], c["position"]], c["word"], **private)
    c["word"].change(on_word, [c["tree_result"], c["position"], c["word"]], c["prefix"], **private)
    run_what_if = {"fn": what_if, "inputs": [c["sentence"], *model, beam, c["prefix"], unk],
                   "outputs": [c["whatif_status"], c["whatif_result"]], **limits}
    show_what_if = {"fn": render_what_if, "inputs": c["whatif_result"],
                    "outputs": [c["whatif_html"], c["whatif_plot"], c["whatif_tree"]], **private}
    c["whatif_button"].click(**run_what_if, api_name="what_if").then(**show_what_if)
    c["clicked"].change(on_node_click, [c["clicked"], c["tree_result"]], c["prefix"], **private).then(
        **run_what_if, **private).then(**show_what_if)
    c["score_button"].click(score, [c["sentence"], *model, beam, c["yours"]], [c["score_status"], c["score_result"]],
                            api_name="score", **limits).then(
        render_score, c["score_result"], [c["score_html"], c["score_plot"], c["model_plot"]], **private)
    c["side"].change(on_side, [c["tree_result"], c["side"]], c["nn_word"], **private)
    c["nn_button"].click(neighbors, [c["sentence"], *model, c["nn_translation"], c["nn_word"], c["side"], c["k"]],
                         [c["nn_status"], c["nn_result"]], api_name="neighbors", **limits).then(
        render_neighbors, c["nn_result"], c["nn_html"], **private)
    return run_tree, show_tree
