"""Attention demo: translate with the bundled attentional LSTM models (or one from the Hub) and look inside.

    python app.py        # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change it)

Runs unchanged as a Hugging Face Space. The page is built from ``demo/`` (input checks, endpoints, rendering,
layout); everything shown comes from the ``nmt`` API. The documented API endpoints are ``/translate``,
``/compare``, ``/model_card`` and the look-inside ones: ``/beam_tree``, ``/what_if``, ``/score``, ``/neighbors``
(see their docstrings in ``demo/endpoints.py`` and ``demo/inside.py``).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # (read when gradio is imported)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from demo.checks import CONCURRENCY, QUEUE_SIZE
from demo.page import CSS, JS, build_demo

demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nmt").setLevel(logging.INFO)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY).launch(
        share=False, max_file_size="5mb", theme=gr.themes.Soft(), css=CSS, js=JS)
