"""The Train tab: train a model in a background process (``nmt.serving.jobs``) and watch it learn.

The visitor is known by a random token kept in the browser (``gr.BrowserState``, encrypted with a key the
app keeps in its jobs folder), so a reloaded page, or the page after an app restart, finds its job again. A
timer polls the job every ``POLL_S`` seconds while it waits or runs: the progress bar, the training curves,
validation BLEU and the tracked sentence's attention heatmap (redrawn only when an epoch finished). A finished
job's model is offered to the Translate controls as ``job:<id>`` in the model field (only this visitor
knows the id), as a zip of its ``best/`` folder, and for a push to the Hub with the visitor's own token.
All the logic is in ``nmt.serving.jobs``; these handlers lay it out.
"""

from __future__ import annotations

import html
import logging
import secrets

import gradio as gr

from nmt import NMTError
from nmt.serving import catalog, jobs, plots

logger = logging.getLogger("nmt.app")
POLL_S = 2.0
OWNER_KEY = "nmt-train-owner"
CSS = """
.nmt-progress {height: 12px; border-radius: 6px; background: var(--border-color-primary); overflow: hidden;
               margin: 6px 0}
.nmt-progress > div {height: 100%; background: var(--color-accent); transition: width 0.5s}
.nmt-job {font-size: 0.9em; color: var(--body-text-color-subdued)}
"""


# ----------------------------------------------------------------------------- layout
def train_tab() -> dict:
    """The tab's components (call inside ``gr.Tab``)."""
    c = {}
    gr.Markdown("Train your own attentional LSTM on the first pairs of Multi30k. Training runs in a background "
                f"process (one CPU thread) while the app keeps translating; one job trains at a time, others wait "
                f"in line. Limits: {jobs.MAX_EPOCHS} epochs, {jobs.MAX_PAIRS:,} pairs, "
                f"{jobs._duration(jobs.manager().max_seconds)} per job.", elem_classes="nmt-note")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            with gr.Group():
                c["direction"] = gr.Dropdown([(catalog.direction_label(d), d) for d in jobs.DIRECTIONS],
                                             value="de-en", label="Direction", elem_id="train-direction")
                c["attention"] = gr.Radio(list(catalog.ATTENTION_KINDS), value="general", label="Attention type",
                                          elem_id="train-attention")
                c["preset"] = gr.Radio([(label, name) for name, label in jobs.PRESET_LABELS.items()], value="tiny",
                                       label="Size", elem_id="train-preset")
                c["epochs"] = gr.Slider(jobs.MIN_EPOCHS, jobs.MAX_EPOCHS, value=3, step=1, label="Epochs",
                                        elem_id="train-epochs")
                c["pairs"] = gr.Slider(jobs.MIN_PAIRS, jobs.MAX_PAIRS, value=1000, step=100,
                                       label="Training pairs (the first N of Multi30k train)", elem_id="train-pairs")
            with gr.Row():
                c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
                c["cancel"] = gr.Button("Cancel", variant="stop", visible=False, elem_id="train-cancel")
        with gr.Column(scale=3):
            c["status"] = gr.HTML(elem_id="train-status")
            with gr.Row(visible=False) as c["model_row"]:
                c["use"] = gr.Button("Translate with this model", elem_id="train-use")
                c["download"] = gr.DownloadButton("Download the model (zip)", elem_id="train-download")
            c["curves"] = gr.Plot(label="Training curves", visible=False, elem_id="train-curves")
            c["tracked"] = gr.Plot(label="Attention during training (drag the slider: epochs)", visible=False,
                                   elem_id="train-tracked")
            with gr.Accordion("Push to the Hugging Face Hub", open=False, visible=False) as c["push_box"]:
                c["repo"] = gr.Textbox(label="Hub repo", placeholder="user/name", elem_id="train-repo")
                c["token"] = gr.Textbox(label="Your Hugging Face access token (write)", type="password",
                                        info="Used for this push only; never stored or logged.", elem_id="train-token")
                c["private"] = gr.Checkbox(False, label="Private repo", elem_id="train-private")
                c["push"] = gr.Button("Push", elem_id="train-push")
                c["push_status"] = gr.HTML(elem_id="train-push-status")
    return c


def wire_train(demo: gr.Blocks, c: dict, hub_id: gr.Textbox, tabs: gr.Tabs) -> None:
    """Connect the tab; ``hub_id`` (the Translate controls' model field) receives ``job:<id>``."""
    # Made here, at the page's top level: inside the tab, which renders when first opened, the browser's
    # stored token would be read only then, after the page's load event.
    c["owner"] = gr.BrowserState(None, storage_key=OWNER_KEY, secret=jobs.browser_secret())
    c["shown"] = gr.State(None)  # (job id, epochs finished, status) last drawn: figures redrawn only on change
    c["timer"] = gr.Timer(POLL_S, active=False)
    private = {"api_visibility": "private"}
    view = [c["status"], c["cancel"], c["model_row"], c["download"], c["push_box"], c["curves"], c["tracked"],
            c["timer"], c["shown"]]
    form = [c["direction"], c["attention"], c["preset"], c["epochs"], c["pairs"]]
    demo.load(ensure_owner, c["owner"], c["owner"], **private).then(poll, [c["owner"], c["shown"]], view, **private)
    c["timer"].tick(poll, [c["owner"], c["shown"]], view, **private)
    c["start"].click(start, [c["owner"], *form], c["status"], concurrency_limit=1, **private).then(
        poll, [c["owner"], c["shown"]], view, **private)
    c["cancel"].click(cancel, c["owner"], c["status"], **private).then(poll, [c["owner"], c["shown"]], view, **private)
    c["use"].click(use_model, c["owner"], [hub_id, tabs], **private).then(
        lambda: None, None, None, js="() => document.getElementById('hub-id')?.scrollIntoView({behavior: 'smooth'})",
        **private)
    c["push"].click(push, [c["owner"], c["repo"], c["token"], c["private"]], [c["push_status"], c["token"]],
                    concurrency_limit=1, **private)


# ----------------------------------------------------------------------------- handlers
def ensure_owner(owner) -> str:
    """The visitor's token: the one the browser keeps, or a new random one."""
    return owner if isinstance(owner, str) and len(owner) >= 16 else secrets.token_urlsafe(24)


def start(owner, direction, attention, preset, epochs, pairs) -> str:
    try:
        job = jobs.manager().submit(owner, jobs.JobRequest(direction, attention, preset, epochs, pairs))
    except NMTError as exc:
        return message_html(str(exc), error=True)
    except Exception as exc:  # a bug: log it, tell the visitor, keep serving
        logger.exception("starting a training job failed")
        return message_html(f"Internal error while starting the job ({type(exc).__name__}).", error=True)
    return message_html(f"Job {job.id[:8]}… queued.")


def cancel(owner) -> str:
    try:
        job = jobs.manager().latest(owner)
        if job is None:
            return message_html("No training job to cancel.")
        jobs.manager().cancel(job.id, owner)
    except NMTError as exc:
        return message_html(str(exc), error=True)
    return message_html("Cancelled.")


def poll(owner, shown) -> tuple:
    """The view of the visitor's latest job: status and progress, buttons, figures, timer, what was drawn."""
    manager = jobs.manager()
    try:
        job = manager.latest(owner) if owner else None
        info = manager.progress(job.id, owner) if job else None
    except NMTError as exc:
        return (message_html(str(exc), error=True), *hidden_view())
    if info is None:
        return (message_html("No training job yet: choose the settings and press Start training."), *hidden_view())
    active = info["status"] in jobs.ACTIVE
    has_model = info["model"] is not None and not active
    state = (info["id"], info["epoch"], info["status"])
    download = gr.DownloadButton(value=str(manager.zip_model(info["id"], owner)) if has_model else None)
    if shown is not None and tuple(shown) == state:
        curves = tracked = gr.skip()  # (redrawing would reset the heatmap's slider on every tick)
    else:
        curves, tracked = figures(manager, info, owner)
    return (status_html(info), gr.Button(visible=active), gr.Row(visible=has_model), download,
            gr.Accordion(visible=has_model), curves, tracked, gr.Timer(active=active), list(state))


def hidden_view() -> tuple:
    return (gr.Button(visible=False), gr.Row(visible=False), gr.DownloadButton(value=None),
            gr.Accordion(visible=False), gr.Plot(visible=False), gr.Plot(visible=False), gr.Timer(active=False), None)


def figures(manager: jobs.JobManager, info: dict, owner: str) -> tuple:
    try:
        curves = gr.Plot(plots.training_curves_figure(info["metrics"], height=300), visible=True)
    except ValueError:  # (no epoch finished yet)
        curves = gr.Plot(None, visible=False)
    tracked = gr.Plot(None, visible=False)
    try:
        records = manager.tracked(info["id"], owner)
        if records:
            tracked = gr.Plot(plots.tracked_attention_figure(records, 0), visible=True)
    except (NMTError, ValueError):  # (none yet, or attention "none")
        pass
    return curves, tracked


def use_model(owner) -> tuple:
    job = jobs.manager().latest(owner) if owner else None
    if job is None:
        return gr.skip(), gr.skip()
    return f"{jobs.JOB_PREFIX}{job.id}", gr.Tabs(selected="translation")


def push(owner, repo, token, private) -> tuple:
    """Push the latest job's model; the token field is emptied whatever happens."""
    try:
        job = jobs.manager().latest(owner)
        if job is None:
            raise jobs.JobError("No trained model to push.")
        url = jobs.manager().push(job.id, owner, repo, token, private)
    except NMTError as exc:
        return message_html(str(exc), error=True), ""
    except Exception as exc:  # noqa: BLE001 (logged without its message, which could quote the request)
        logger.error("pushing a trained model failed (%s)", type(exc).__name__)  # (no message: it could hold the token)
        return message_html(f"The push failed ({type(exc).__name__}).", error=True), ""
    return (f'<div class="nmt-status">Pushed: <a href="{html.escape(url, quote=True)}" target="_blank" '
            f'rel="noopener">{html.escape(url)}</a></div>'), ""


# ----------------------------------------------------------------------------- HTML
def message_html(text: str, error: bool = False) -> str:
    kind, icon = ("nmt-error", "⚠️ ") if error else ("nmt-ok", "")
    return f'<div class="nmt-status {kind}">{icon}{html.escape(text, quote=False)}</div>'


def status_html(info: dict) -> str:
    request = info["request"]
    failed = info["status"] == "failed"
    percent = round(100 * info["fraction"])
    head = message_html(info["message"], error=failed)
    bar = (f'<div class="nmt-progress" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
           f'aria-valuemax="100"><div style="width: {percent}%"></div></div>')
    what = (f"Job {info['id'][:8]}…: {catalog.direction_label(request['direction'])}, attention "
            f"{request['attention']}, preset {request['preset']}, {request['epochs']} epochs, "
            f"{request['pairs']:,} pairs · {info['status']}")
    if info["model"] and info["status"] not in jobs.ACTIVE:
        what += f" · in the model field: {jobs.JOB_PREFIX}{info['id']}"
    return head + bar + f'<div class="nmt-job">{html.escape(what)}</div>'
