"""The page: controls, layout, CSS and the events that connect them."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from demo.checks import CONCURRENCY, DEFAULT_DIRECTION, MAX_BEAM, MAX_CHARS, MAX_SENTENCES, MODELS, TITLE, _shown
from demo.endpoints import compare, model_card, tracked_attention, translate
from demo.inside_page import CSS as INSIDE_CSS
from demo.inside_page import JS as INSIDE_JS
from demo.inside_page import inside_tab, wire_inside
from demo.render import pick_candidate, render_comparison, render_translation
from demo.train_tab import CSS as TRAIN_CSS
from demo.train_tab import train_tab, wire_train
from nmt import split_sentences
from nmt.config import ATTENTION_KINDS
from nmt.serving import catalog


# ----------------------------------------------------------------------------- page controls
def attention_choices(direction: str | None) -> list[tuple[str, str]]:
    """Radio choices: every attention kind, labelled with its test BLEU (or as not bundled), then the
    direction's other bundled models (a character-CNN encoder...)."""
    labels = []
    for kind in ATTENTION_KINDS:
        model = catalog.find(MODELS, direction or "", kind)
        labels.append((model.label if model else f"{kind} · not bundled", kind))
    return labels + [(m.label, m.choice) for m in catalog.variants(MODELS, direction or "")]


def default_attention(direction: str | None, current: str | None = None) -> str:
    kinds = [m.choice for m in MODELS if m.direction == direction]
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


JS = INSIDE_JS  # (the page's only script: beam-tree clicks)
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
""" + INSIDE_CSS + TRAIN_CSS


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
                    inside_button = gr.Button("Look inside the search", elem_id="inside-button")
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
            with gr.Tab("Look inside", id="inside"):
                inside = inside_tab()
            with gr.Tab("Model card", id="card"):
                card = gr.Markdown(label="model card", elem_id="model-card")
                curves = gr.Plot(label="Training curves", visible=False, elem_id="training-curves")
                tracked_pick = gr.Radio([], label="Attention forming during training: a validation sentence",
                                        visible=False, elem_id="tracked-sentence")
                tracked = gr.Plot(label="Attention, epoch by epoch", visible=False, elem_id="tracked-attention")
            with gr.Tab("Train a model", id="train"):
                train = train_tab()

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
    """A fixed number of hidden slots (card, the n-best candidate to draw, heatmap), one per possible sentence."""
    components = []
    for i in range(MAX_SENTENCES):
        with gr.Column(visible=False, elem_id=f"slot-{i}") as column:
            card = gr.HTML()
            pick = gr.Radio([], label="Heatmap of n-best candidate", visible=False, elem_id=f"candidate-{i}")
            plot = gr.Plot(label=f"Attention, sentence {i + 1}", visible=False, elem_id=f"heatmap-{i}")
        components += [column, card, pick, plot]
    return components


def comparison_slots() -> list:
    """One slot per attention kind, two per row: four heatmaps in a row leave each too narrow for its
    source words; a row's columns stack on a phone."""
    components = []
    for pair in (ATTENTION_KINDS[:2], ATTENTION_KINDS[2:]):
        with gr.Row(equal_height=False):
            for kind in pair:
                with gr.Column(visible=False, min_width=320, elem_id=f"compare-{kind}") as column:
                    card = gr.HTML()
                    plot = gr.Plot(label=f"{kind} attention", visible=False, elem_id=f"compare-heatmap-{kind}")
                components += [column, card, plot]
    return components


def wire(c: SimpleNamespace) -> None:
    """Connect the events; the public API endpoints are /translate, /compare, /model_card and the look-inside ones."""
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
    show_tracked = {"fn": tracked_view, "inputs": card_inputs, "outputs": [c.tracked_pick, c.tracked], **private}
    c.demo.load(model_card, card_inputs, card_outputs, api_name="model_card").then(**show_curves).then(**show_tracked)
    for event in (c.attention.change, c.hub_id.submit, c.hub_id.blur):
        event(model_card, card_inputs, card_outputs, **private).then(**show_curves).then(**show_tracked)
    c.direction.change(on_direction, [c.direction, c.attention], [c.attention, c.examples], **private).then(
        model_card, card_inputs, card_outputs, **private).then(**show_curves).then(**show_tracked)
    c.tracked_pick.input(lambda sentence, *model: tracked_attention(*model, sentence=sentence)[0],
                         [c.tracked_pick, *card_inputs], c.tracked, **private)
    c.examples.click(lambda sample: sample[0], c.examples, c.text, **private)
    wire_train(c.demo, c.train, c.hub_id, c.tabs)
    for i in range(MAX_SENTENCES):
        pick, plot = c.slots[4 * i + 2], c.slots[4 * i + 3]
        pick.input(pick_candidate(i), [pick, c.result], plot, **private)
    run_tree, show_tree = wire_inside(c.inside, [c.direction, c.attention, c.hub_id], c.beam, c.unk)
    c.inside_button.click(first_sentence, c.text, c.inside["sentence"], **private).then(
        lambda: gr.Tabs(selected="inside"), None, c.tabs, **private).then(**run_tree, **private).then(**show_tree)


def tracked_view(direction: str, attention: str, hub_id: str) -> tuple:
    """The model card's tracked sentences: a choice among them (when there are several) and the first's
    attention over the epochs; both hidden for a checkpoint without ``tracked.jsonl``."""
    figure, labels = tracked_attention(direction, attention, hub_id)
    return (gr.Radio(choices=[(label, i) for i, label in enumerate(labels)], value=0,
                     visible=figure is not None and len(labels) > 1),
            gr.Plot(value=figure, visible=figure is not None))


def first_sentence(text: str | None) -> str:
    """The first sentence of the input (the look-inside tab works on one)."""
    sentences = split_sentences(text or "")
    return sentences[0] if sentences else ""
